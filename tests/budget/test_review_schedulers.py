"""Review of the compute-budget schedulers: faults a user could hit, each pinned by a test.

* the adaptive signal kept a reference to the caller's observation / action arrays, so a
  control loop that refills one buffer in place saw no change at all;
* the deadline scheduler took a NaN / infinite / negative ``elapsed_ms`` silently, and
  its public methods raised raw ``TypeError`` / ``KeyError``;
* the constructors let non-numbers through to a raw ``TypeError``, accepted infinite
  values their own ``spec()`` cannot rebuild, refused numpy integers and crashed with
  ``OverflowError`` on a huge window;
* ``make_scheduler`` (and so ``swan eval --scheduler '{...}'``) crashed with a traceback
  on a non-string kind, on unknown keys of mixed types and on out-of-range integers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swan_policy.budget.schedulers import (
    DEFAULT_LEVELS,
    Adaptive,
    Deadline,
    StepInfo,
    make_scheduler,
)
from swan_policy.cli import main


# ------------------------------------------------- 1: the adaptive signal and the caller's buffers
def test_adaptive_obs_signal_sees_a_buffer_refilled_in_place() -> None:
    """A robot loop that writes each new reading into the same float32 array: the
    scheduler used to keep that very array as "the previous observation", so every
    change read as 0 and the hardness signal was dead."""
    s = Adaptive(0.5, signal="obs")
    buf = {"proprio": np.zeros(3, np.float32)}
    assert s.hardness(StepInfo(step=0, obs=buf)) is None
    buf["proprio"][:] = 1.0
    assert s.hardness(StepInfo(step=1, obs=buf)) == pytest.approx(1.0)
    assert buf["proprio"].tolist() == [1.0, 1.0, 1.0]  # the caller's array is untouched


def test_adaptive_action_signal_sees_a_buffer_refilled_in_place() -> None:
    s = Adaptive(0.5, signal="action")
    action = np.zeros(2)  # float64, contiguous: np.asarray(...).ravel() is a view
    assert s.hardness(StepInfo(step=1, action=action)) is None
    action[:] = [3.0, 4.0]
    assert s.hardness(StepInfo(step=2, action=action)) == pytest.approx(5.0)


def test_adaptive_budgets_do_not_depend_on_buffer_reuse() -> None:
    """The same readings, fresh arrays or one reused buffer: the same budgets."""
    rng = np.random.default_rng(0)
    readings = rng.normal(size=(200, 4)).astype(np.float32)
    readings[::10] *= 20.0  # occasional hard steps

    def play(reuse: bool) -> list[float]:
        s = Adaptive(0.5, signal="obs")
        s.reset()
        buf = np.zeros(4, np.float32)
        out = []
        for t, r in enumerate(readings):
            if reuse:
                buf[:] = r
                obs = {"proprio": buf}
            else:
                obs = {"proprio": r.copy()}
            out.append(s.budget(StepInfo(step=t, obs=obs)))
        return out

    fresh = play(reuse=False)
    assert len(set(fresh)) > 1
    assert play(reuse=True) == fresh


# --------------------------------------------------------- 2: the deadline's timing inputs
def _warm_deadline() -> Deadline:
    s = Deadline(deadline_ms=7.0, window=5)
    for level, ms in zip(DEFAULT_LEVELS, (8.0, 6.0, 4.0, 2.0), strict=True):
        for _ in range(5):
            s.observe_latency(level, ms)
    s.reset()
    return s


@pytest.mark.parametrize("elapsed", [math.nan, math.inf, -1.0, "3", None])
def test_deadline_refuses_a_bad_elapsed_ms_naming_it(elapsed: Any) -> None:
    """NaN elapsed time made every measured level "not fit" and silently dropped to the
    cheapest level (and forgot the windows of the others); -1 ms silently widened the
    slack; a string crashed with a raw TypeError."""
    s = _warm_deadline()
    assert s.budget(StepInfo(step=0)) == 0.75
    before = {b: s.p99(b) for b in s.levels}
    with pytest.raises(ValueError, match=r"^elapsed_ms: must be finite and >= 0, got "):
        s.budget(StepInfo(step=1, latency_ms=3.0, elapsed_ms=elapsed))
    # nothing changed: the latency of the refused step was not recorded
    assert {b: s.p99(b) for b in s.levels} == before
    assert s.budget(StepInfo(step=1, latency_ms=3.0)) == 0.75


@pytest.mark.parametrize("ms", [None, "3.0", [3.0]])
def test_deadline_observe_latency_refuses_a_non_number_naming_it(ms: Any) -> None:
    with pytest.raises(ValueError, match=r"^latency_ms: must be finite and >= 0, got "):
        Deadline(5.0).observe_latency(1.0, ms)


@pytest.mark.parametrize("method", ["p99", "retry_after", "observe_latency"])
def test_deadline_methods_refuse_a_level_off_the_ladder_naming_it(method: str) -> None:
    """p99(0.3) and retry_after(0.3) used to raise a bare KeyError: 0.3."""
    s = Deadline(5.0)
    args = (0.3, 1.0) if method == "observe_latency" else (0.3,)
    with pytest.raises(ValueError, match=r"^level: 0.3 is not one of \[1.0, 0.75, 0.5, 0.25\]"):
        getattr(s, method)(*args)


# ---------------------------------------------------------------- 3: constructor arguments
@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (Deadline, {"hysteresis": "0.1"}, "hysteresis: expected a finite number"),
        (Deadline, {"safety_ms": "1"}, "safety_ms: expected a finite number"),
        (Deadline, {"safety_ms": math.inf}, "safety_ms: expected a finite number"),
        (Deadline, {"window": 10**30}, "window: must be at most"),
        (Adaptive, {"low": "0"}, "low: expected a finite number"),
        (Adaptive, {"high": math.inf}, "high: expected a finite number"),
        (Adaptive, {"ema": None}, "ema: expected a finite number"),
        (Adaptive, {"capacity": math.inf}, "capacity: expected a finite number"),
        (Adaptive, {"capacity": None}, "capacity: expected a finite number"),
        (Adaptive, {"initial": "1"}, "initial: expected a finite number"),
    ],
    ids=str,
)
def test_bad_constructor_arguments_are_value_errors_naming_them(
    cls: Any, kwargs: dict[str, Any], message: str
) -> None:
    """Strings used to reach a comparison (raw TypeError); infinite capacity / high /
    safety_ms were accepted although spec() then could not rebuild the scheduler; a
    huge window crashed in deque() with OverflowError."""
    first = 5.0 if cls is Deadline else 0.5  # deadline_ms / target
    with pytest.raises(ValueError) as err:
        cls(first, **kwargs)
    assert str(err.value).startswith(message), str(err.value)


def test_numpy_integers_are_integers() -> None:
    """window=np.int64(5) was refused with "must be an integer >= 1, got np.int64(5)"."""
    s = Deadline(5.0, window=np.int64(5), up_after=np.int32(2))
    assert s.window == 5 and type(s.window) is int and s.up_after == 2
    assert make_scheduler(s.spec()).spec() == s.spec()


# -------------------------------------------------------- 4: make_scheduler and the CLI
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": ["fixed"]}, "scheduler.kind: expected one of fixed, deadline, adaptive"),
        ({"kind": {"a": 1}}, "scheduler.kind: expected one of fixed, deadline, adaptive"),
        ({"kind": "fixed", 1: 2, "b": 3}, "scheduler.1: unknown field for 'fixed'"),
        (
            {"kind": "deadline", "deadline_ms": 5, "window": 10**30},
            "scheduler.window: must be at most",
        ),
        ({"kind": "fixed", "budget": 10**400}, "scheduler.budget: expected a finite number"),
        (
            {"kind": "deadline", "deadline_ms": 5, "hysteresis": 10**400},
            "scheduler.hysteresis: expected a finite number",
        ),
    ],
)
def test_make_scheduler_odd_specs_are_one_line_value_errors(spec: Any, message: str) -> None:
    with pytest.raises(ValueError) as err:
        make_scheduler(spec)
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{kind: [fixed]}", "error: --scheduler: scheduler.kind: expected one of"),
        (
            "{kind: deadline, deadline_ms: 5, window: 99999999999999999999}",
            "error: --scheduler: scheduler.window: must be at most",
        ),
    ],
)
def test_odd_scheduler_mappings_through_the_cli_are_one_line(
    capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    """Both used to end `swan eval` with a Python traceback (TypeError: unhashable type:
    'list'; OverflowError: Python int too large to convert to C ssize_t)."""
    assert main(["eval", "--run", "runs/does-not-matter", "--scheduler", value]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), captured.err
    assert "Traceback" not in captured.err + captured.out


# ------------------------------------------------- 5: the deadline scheduler's p99, cached
@given(
    window=st.integers(1, 12),
    latencies=st.lists(st.floats(0.0, 50.0, allow_nan=False), min_size=0, max_size=40),
)
@settings(max_examples=200, deadline=None, derandomize=True)
def test_deadline_p99_is_numpys_higher_percentile_of_the_window(
    window: int, latencies: list[float]
) -> None:
    """The p99 is cached per level and computed by a sort; it stays numpy's
    ``percentile(window, 99, method="higher")`` after every observation."""
    s = Deadline(5.0, window=window, levels=(1.0, 0.5))
    assert s.p99(1.0) is None
    for i, ms in enumerate(latencies):
        s.observe_latency(1.0, ms)
        kept = latencies[max(0, i + 1 - window) : i + 1]
        assert s.p99(1.0) == float(np.percentile(kept, 99, method="higher"))
        assert s.p99(0.5) is None  # the other level's cache is its own


def test_deadline_forgets_a_cached_p99_with_the_window() -> None:
    """A level excluded for its p99 is re-probed after its back-off with an empty window:
    the cached p99 goes with it (it counts as unmeasured and may be stepped up to)."""
    s = Deadline(2.0, window=3, up_after=1, hysteresis=0.0, levels=(1.0, 0.5))
    for _ in range(3):
        s.observe_latency(1.0, 10.0)  # far over the deadline
        s.observe_latency(0.5, 0.5)
    assert s.p99(1.0) == 10.0
    budgets = [s.budget(StepInfo(step=t)) for t in range(6)]
    assert budgets[0] == 0.5
    assert s.p99(1.0) is None and 1.0 in budgets  # forgotten, then probed again


def test_adaptive_obs_signal_names_an_observation_that_changed_within_the_episode() -> None:
    """A new key or shape mid-episode used to fail with a raw KeyError or numpy's
    broadcast error; reset() starts a new episode, where any layout is fine."""
    s = Adaptive(0.5, signal="obs")
    s.budget(StepInfo(step=0, obs={"proprio": np.zeros(3, np.float32)}))
    for changed in (
        {"proprio": np.zeros(4, np.float32)},
        {"state": np.zeros(3, np.float32)},
        {"proprio": np.zeros(3, np.float32), "pixels": np.zeros((2, 2, 3), np.uint8)},
    ):
        with pytest.raises(ValueError, match=r"obs: the observation changed within the episode"):
            s.budget(StepInfo(step=1, obs=changed))
    s.reset()
    assert s.budget(StepInfo(step=0, obs={"proprio": np.zeros(4, np.float32)})) in s.levels

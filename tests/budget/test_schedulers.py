"""Scheduler contracts: budgets are ladder levels in (0, 1], deterministic, the adaptive
average constraint holds, the deadline scheduler falls back when latency spikes, and bad
configs fail with one line naming the field (here and through the CLI)."""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from swan_policy.budget.schedulers import (
    DEFAULT_LEVELS,
    Adaptive,
    Deadline,
    Fixed,
    Schedule,
    Scheduler,
    StepInfo,
    make_scheduler,
    snap,
)
from swan_policy.cli import main

SPECS = [
    "fixed:0.5",
    {"kind": "deadline", "deadline_ms": 5.0, "window": 8},
    {"kind": "adaptive", "target": 0.4, "signal": "action"},
    {"kind": "adaptive", "target": 0.5, "signal": "obs"},
    {"kind": "adaptive", "target": 0.3, "signal": "margin"},
    {"kind": "schedule", "steps": [[0, 1.0], [5, 0.5]], "phases": {"grasp": 0.75}},
]


@functools.lru_cache(maxsize=8)
def synthetic_steps(n: int, seed: int) -> list[StepInfo]:
    """A deterministic episode: smooth actions with occasional jumps, latencies that
    grow with the step's noise, a phase switch, changing observations."""
    rng = np.random.default_rng(seed)
    steps, action = [], np.zeros(2)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for t in range(n):
        jump = rng.random() < 0.1
        action = action + rng.normal(0, 1.0 if jump else 0.05, 2)
        if jump:
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        obs = {"pixels": pixels, "proprio": action.astype(np.float32)}
        steps.append(
            StepInfo(
                step=t,
                obs=obs,
                action=action.copy() if t else None,
                margin=float(rng.uniform(0.05, 2.0)),
                latency_ms=float(rng.uniform(1.0, 8.0)) if t else None,
                phase="grasp" if 10 <= t < 15 else None,
            )
        )
    return steps


def play(s: Scheduler, steps: list[StepInfo]) -> list[float]:
    s.reset()
    return [s.budget(step) for step in steps]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_budgets_are_levels_and_deterministic(spec: object) -> None:
    steps = synthetic_steps(200, seed=1)
    a = make_scheduler(spec)  # type: ignore[arg-type]  # specs drawn as object
    first = play(a, steps)
    assert all(0.0 < b <= 1.0 and b in DEFAULT_LEVELS for b in first)
    # a fresh instance, and the same instance after reset, repeat the sequence exactly
    # (the deadline's latency windows outlive reset by design, so only a fresh one)
    assert play(make_scheduler(spec), steps) == first  # type: ignore[arg-type]  # as above
    if not isinstance(a, Deadline):
        assert play(a, steps) == first
    # spec() rebuilds an equivalent scheduler
    assert play(make_scheduler(a.spec()), steps) == first


def test_fixed_and_snap() -> None:
    assert snap(0.6, DEFAULT_LEVELS) == 0.5
    assert snap(0.1, DEFAULT_LEVELS) == 0.25
    assert snap(0.75, DEFAULT_LEVELS) == 0.75
    assert play(Fixed(0.8), synthetic_steps(5, 0)) == [0.75] * 5
    assert play(Fixed(0.3, levels=[0.3, 1.0]), synthetic_steps(3, 0)) == [0.3] * 3


@pytest.mark.parametrize("signal", ["action", "obs", "margin"])
@pytest.mark.parametrize("target", [0.25, 0.4, 0.6, 0.9])
def test_adaptive_mean_budget_stays_under_target_over_a_long_run(
    signal: str, target: float
) -> None:
    s = Adaptive(target, signal=signal)
    steps = synthetic_steps(5000, seed=2)
    for episode in range(3):  # every episode (the bucket restarts), every prefix
        budgets = np.array(play(s, steps[episode * 1000 :]))
        prefix_means = np.cumsum(budgets) / np.arange(1, len(budgets) + 1)
        assert prefix_means.max() <= target + 1e-9
        # and it does use the budget it is given (not stuck at the cheapest level)
        assert budgets.mean() >= target - 0.1


def test_adaptive_spends_more_on_hard_steps() -> None:
    """Steps after a large action change get a larger budget on average."""
    steps = synthetic_steps(3000, seed=3)
    budgets = np.array(play(Adaptive(0.5, signal="action"), steps))
    change = np.array(
        [
            np.linalg.norm(steps[t].action - steps[t - 1].action)  # type: ignore[operator]  # t > 1: set
            if t > 1
            else 0.0
            for t in range(len(steps))
        ]
    )
    hard = change > np.quantile(change, 0.9)
    assert budgets[hard].mean() > budgets[~hard].mean() + 0.2


@given(
    target=st.floats(0.25, 1.0),
    signals=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=300),
    capacity=st.floats(1.0, 10.0),
)
def test_adaptive_token_bucket_property(
    target: float, signals: list[float], capacity: float
) -> None:
    s = Adaptive(target, signal="margin", capacity=capacity)
    s.reset()
    total = 0.0
    for t, m in enumerate(signals):
        b = s.budget(StepInfo(step=t, margin=m))
        total += b
        assert b in DEFAULT_LEVELS
        assert total <= (t + 1) * target + 1e-9


def test_deadline_picks_largest_fitting_level_and_falls_back_on_spikes() -> None:
    s = Deadline(deadline_ms=7.0, window=5, hysteresis=0.1, up_after=2)
    for level, ms in zip(DEFAULT_LEVELS, (8.0, 6.0, 4.0, 2.0), strict=True):
        for _ in range(5):
            s.observe_latency(level, ms)
    s.reset()
    assert s.budget(StepInfo(step=0)) == 0.75  # 1.0's p99 (8 ms) misses the 7 ms deadline
    # a latency spike at 0.75 (reported with the next step): fall back at once
    assert s.budget(StepInfo(step=1, latency_ms=30.0)) == 0.5
    # time already spent in the period shrinks the slack: only 0.25 fits 7 - 4 = 3 ms
    assert s.budget(StepInfo(step=2, elapsed_ms=4.0)) == 0.25
    # nothing fits: the cheapest level
    assert s.budget(StepInfo(step=3, latency_ms=50.0, elapsed_ms=6.5)) == 0.25
    # the spike leaves 0.75's window after 5 new measurements; then hysteresis:
    # step up one level at a time, each after up_after=2 steps with room to spare
    for _ in range(5):
        s.observe_latency(0.75, 5.0)
    s.observe_latency(0.25, 2.0)  # push the 50 ms out of the cheapest level's p99
    for _ in range(5):
        s.observe_latency(0.25, 2.0)
    got = [s.budget(StepInfo(step=4 + i)) for i in range(6)]
    # 1.0, excluded for its 8 ms p99 for window=5 steps by now, is re-probed: its window
    # is forgotten and it is stepped up to like an unmeasured level (a deliberate change:
    # it used to stay excluded for good, since an excluded level gets no new samples)
    assert got == [0.25, 0.5, 0.5, 0.75, 0.75, 1.0]
    # still 8 ms: back down at once, and the next retry waits twice as long
    assert s.budget(StepInfo(step=10, latency_ms=8.0)) == 0.75
    assert s.retry_after(1.0) == 10


def test_deadline_hysteresis_blocks_steps_up_without_room() -> None:
    s = Deadline(deadline_ms=10.0, hysteresis=0.2, up_after=1)
    for level, ms in zip(DEFAULT_LEVELS, (9.5, 7.0, 4.0, 2.0), strict=True):
        s.observe_latency(level, ms)
    s.reset()
    assert s.budget(StepInfo()) == 1.0  # fits 10 ms at the start
    s.observe_latency(1.0, 12.0)  # a spike at the top level
    assert s.budget(StepInfo()) == 0.75
    s2 = Deadline(deadline_ms=10.0, hysteresis=0.2, up_after=1, window=1)
    for level, ms in zip(DEFAULT_LEVELS, (12.0, 7.0, 4.0, 2.0), strict=True):
        s2.observe_latency(level, ms)
    s2.reset()
    assert s2.budget(StepInfo()) == 0.75
    s2.observe_latency(1.0, 9.5)  # fits 10 ms but not the 8 ms hysteresis band
    assert [s2.budget(StepInfo()) for _ in range(3)] == [0.75] * 3
    s2.observe_latency(1.0, 7.5)  # fits the band: up
    assert s2.budget(StepInfo()) == 1.0


def test_deadline_attributes_reported_latency_to_the_previous_level() -> None:
    s = Deadline(deadline_ms=5.0)
    s.reset()
    assert s.budget(StepInfo()) == 1.0  # nothing measured yet: optimistic
    assert s.budget(StepInfo(latency_ms=9.0)) == 0.75  # 1.0 took 9 ms
    assert s.p99(1.0) == 9.0 and s.p99(0.75) is None


def _deadline_run(s: Deadline, steps: int, latency) -> list[float]:
    """Play ``steps`` steps, reporting ``latency(t, level)`` for each step's level."""
    s.reset()
    got: list[float] = []
    ms = None
    for t in range(steps):
        b = s.budget(StepInfo(step=t, latency_ms=ms))
        got.append(b)
        ms = latency(t, b)
    return got


def test_deadline_one_spike_does_not_ban_a_level_for_good() -> None:
    """A single slow step at the top level (a first onnxruntime call, a hiccup) used to
    exclude it for the rest of the run: it never ran again, so its window never
    changed. Now it is re-probed after ``window`` steps and comes back."""
    machine = {1.0: 3.0, 0.75: 2.0, 0.5: 1.5, 0.25: 1.0}  # all fit the 5 ms deadline
    s = Deadline(deadline_ms=5.0, window=10, up_after=3)
    got = _deadline_run(s, 2000, lambda t, b: 50.0 if t == 20 else machine[b])
    assert got[20] == 1.0 and got[21] < 1.0  # the spike steps down at once
    assert got[21:60].count(1.0) > 0  # back within a few windows
    assert got[100:].count(1.0) == len(got) - 100  # and stays: one spike, one step down
    assert s.retry_after(1.0) == 10  # the retry fitted: back-off at its base


def test_deadline_retries_a_truly_slow_level_with_growing_gaps() -> None:
    """A level that is always too slow costs one slow step per back-off period, and the
    back-off doubles after each failed retry, up to 64 windows."""
    machine = {1.0: 50.0, 0.75: 2.0, 0.5: 1.5, 0.25: 1.0}
    s = Deadline(deadline_ms=5.0, window=10, up_after=3)
    got = np.array(_deadline_run(s, 20_000, lambda t, b: machine[b]))
    runs = np.flatnonzero(got == 1.0)
    assert runs[0] == 0  # unmeasured at first: optimistic
    # retried (one step each) after 10, 20, 40, ... steps, capped at 640 (64 windows),
    # each plus the up_after=3 steps of hysteresis: 37 slow steps in 20,000
    gaps = np.diff(runs).tolist()
    assert gaps[:7] == [10 * 2**k + 3 for k in range(7)]
    assert set(gaps[6:]) == {64 * 10 + 3}
    assert s.retry_after(1.0) == 64 * 10
    assert set(np.unique(got)) == {1.0, 0.75}  # the rest of the time: the next level


def test_make_scheduler_checks_the_given_ladder() -> None:
    """A spec naming no levels is checked against the ladder it will run on (a bundle's),
    not the default one: target 0.2 is fine on a ladder down to 0.125."""
    s = make_scheduler("adaptive:0.2", levels=[1.0, 0.5, 0.125])
    assert s.levels == (1.0, 0.5, 0.125) and s.spec()["target"] == 0.2
    with pytest.raises(ValueError, match="cheapest level 0.5, got 0.2"):
        make_scheduler("adaptive:0.2", levels=[1.0, 0.5])
    # a spec's own levels win
    assert make_scheduler({"kind": "fixed", "levels": [1, 0.3]}, levels=[1.0]).levels == (1, 0.3)


def test_schedule_table() -> None:
    s = Schedule(steps=[[0, 1.0], [3, 0.5], [6, 0.3]], phases={"carry": 0.25}, default=0.75)
    s.reset()
    got = [s.budget(StepInfo(step=t, phase="carry" if t == 4 else "other")) for t in range(8)]
    assert got == [1.0, 1.0, 1.0, 0.5, 0.25, 0.5, 0.25, 0.25]
    assert Schedule(default=0.75).budget(StepInfo(step=100)) == 0.75


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("warp", "scheduler.kind: expected one of fixed, deadline, adaptive, schedule"),
        ({"target": 0.4}, "scheduler.kind: expected one of"),
        ("fixed:abc", "scheduler.budget: expected a number, got 'abc'"),
        ("fixed:1.5", "scheduler.budget: must be in (0, 1], got 1.5"),
        ("schedule:3", "scheduler: 'schedule' takes no ':value'"),
        ("adaptive", "scheduler.target: required for 'adaptive'"),
        ("adaptive:0.1", "scheduler.target: must be >= the cheapest level 0.25"),
        ({"kind": "adaptive", "target": 0.4, "gain": 2}, "scheduler.gain: unknown field"),
        ({"kind": "adaptive", "target": 0.4, "signal": "vibes"}, "scheduler.signal: expected"),
        ({"kind": "adaptive", "target": "x"}, "scheduler.target: expected a finite number"),
        ("deadline:-3", "scheduler.deadline_ms: must be finite and > 0"),
        ({"kind": "deadline", "deadline_ms": 5, "window": 2.5}, "scheduler.window: expected an"),
        ({"kind": "fixed", "levels": [1.0, 1.5]}, "scheduler.levels: each level must be in"),
        ({"kind": "fixed", "levels": "1,0.5"}, "scheduler.levels: expected a list of numbers"),
        ({"kind": "schedule", "steps": [[0, 1.0], [0, 0.5]]}, "scheduler.steps: first steps"),
        ({"kind": "schedule", "steps": [[0, "a"]]}, "scheduler.steps[0]: expected a number"),
        ({"kind": "schedule", "steps": 3}, "scheduler.steps: expected a list"),
        ({"kind": "schedule", "phases": {"a": 2}}, "scheduler.phases.a: must be in (0, 1]"),
    ],
)
def test_bad_config_is_one_line_value_error(spec: object, message: str) -> None:
    with pytest.raises(ValueError) as err:
        make_scheduler(spec)  # type: ignore[arg-type]  # bad specs, on purpose
    text = str(err.value)
    assert text.startswith(message), text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheduler", "warp"], "error: --scheduler: scheduler.kind: expected one of"),
        (
            ["--scheduler", "adaptive", "--avg-budget", "1.5"],
            "error: --scheduler: scheduler.target: must be in (0, 1]",
        ),
        (["--scheduler", "deadline"], "error: --scheduler: scheduler.deadline_ms: required"),
    ],
)
def test_bad_scheduler_through_the_cli_is_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["eval", "--run", "runs/does-not-matter", *args]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), captured.err
    assert "Traceback" not in captured.err + captured.out


def test_schedulers_module_imports_without_torch() -> None:
    code = (
        "import sys, swan_policy.budget, swan_policy.budget.schedulers\n"
        "bad = [m for m in ('torch', 'pydantic', 'gymnasium') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_scheduler_options_expand_to_one_spec_per_sweep_point() -> None:
    from swan_policy.cli import parse_schedulers

    specs = parse_schedulers(
        ["fixed", "adaptive", "deadline", "{kind: schedule, phases: {push: 1.0}, default: 0.5}"],
        "0.3,0.5",
        "4",
        "obs",
    )
    assert [(s["kind"], s.get("target"), s.get("signal")) for s in specs[:2]] == [
        ("adaptive", 0.3, "obs"),
        ("adaptive", 0.5, "obs"),
    ]
    assert specs[2]["kind"] == "deadline" and specs[2]["deadline_ms"] == 4.0
    assert specs[3]["kind"] == "schedule" and specs[3]["phases"] == {"push": 1.0}
    assert len(specs) == 4  # "fixed" is the --budgets rows, not a spec

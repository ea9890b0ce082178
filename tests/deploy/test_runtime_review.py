"""Review fixes of the deploy runtime and loop: warm-up, margin on folded bundles, level
file names, manifest and graph checks at load, scheduler ladder, env kwargs, unjudged
int8 graphs, load arguments, failed steps, non-finite rates (RELIABILITY rows 2, 14, 15)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from swan_policy.budget.schedulers import Deadline, Scheduler, StepInfo
from swan_policy.cli import main as swan_main
from swan_policy.deploy import BundleError, PolicyRuntime, loop
from swan_policy.deploy import runtime as runtime_module
from swan_policy.deploy.manifest import level_file, sha256_file
from tests.deploy.conftest import one_obs
from tests.reliability._bundles import linear_bundle


class _Spy:
    """An onnxruntime session that counts its runs (and can fail once on request)."""

    def __init__(self, sess) -> None:
        self.sess, self.calls, self.fail_next = sess, 0, False

    def run(self, *args, **kwargs):
        self.calls += 1
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("onnxruntime failed (injected)")
        return self.sess.run(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.sess, name)


def _copy(reach_bundle, tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(reach_bundle[0], dst)
    return dst


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "bundle.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- 1a: warm-up at load
def test_load_warms_up_every_session_outside_stats_and_scheduler(reach_bundle, monkeypatch) -> None:
    """onnxruntime's first calls are several times slower: load() runs each session a
    few times on a neutral observation, which neither stats() nor the scheduler sees."""
    spies: list[_Spy] = []

    def spying_load_session(path, threads=1):
        spies.append(_Spy(real_load(path, threads)))
        return spies[-1]

    real_load = runtime_module.load_session
    monkeypatch.setattr(runtime_module, "load_session", spying_load_session)
    deadline = Deadline(deadline_ms=5.0, levels=(1.0, 0.5))
    runtime = PolicyRuntime.load(reach_bundle[0], scheduler=deadline)
    assert [s.calls for s in spies] == [3, 3]  # every level, the default count
    assert runtime.stats()["steps"] == 0
    assert deadline.p99(1.0) is None and deadline.p99(0.5) is None
    spies.clear()
    runtime = PolicyRuntime.load(reach_bundle[0], warmup=0)
    assert [s.calls for s in spies] == [0, 0]
    runtime.act(one_obs(0))
    assert runtime.stats()["steps"] == 1
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=r"^warmup: must be an integer >= 0"):
            PolicyRuntime.load(reach_bundle[0], warmup=bad)


# ---------------------------------------------------------------- 2: margin signal
def test_margin_signal_on_a_folded_bundle_is_refused(reach_bundle) -> None:
    """A folded bundle's graphs have no gate_margin output: the margin signal would be
    None every step and the scheduler silently run on no signal."""
    with pytest.raises(ValueError) as err:
        spec = {"kind": "adaptive", "target": 0.75, "signal": "margin"}
        PolicyRuntime.load(reach_bundle[0], scheduler=spec)
    text = str(err.value)
    assert text.startswith(f"{reach_bundle[0]}: scheduler signal 'margin' needs")
    parts = ["'gate_margin' output", "levels 1, 0.5", "signal 'action' or 'obs'"]
    for part in [*parts, "swan export --gates kept"]:
        assert part in text, text
    assert "\n" not in text
    PolicyRuntime.load(reach_bundle[0], scheduler={"kind": "adaptive", "target": 0.75})


# ---------------------------------------------------------------- 3: level file names
def test_level_file_names_are_exact() -> None:
    """Budgets exact at 2 decimals keep today's names; others get an exact longer one,
    so 0.125 and 0.12 no longer share level_0.12.onnx."""
    assert level_file(1.0) == "level_1.00.onnx" and level_file(0.5) == "level_0.50.onnx"
    assert level_file(0.25, ".int8") == "level_0.25.int8.onnx"
    assert level_file(0.12) == "level_0.12.onnx"
    assert level_file(0.125) == "level_0.125.onnx"
    assert level_file(0.125, ".int8") == "level_0.125.int8.onnx"
    assert level_file(1 / 3) == "level_0.333333.onnx"


# ---------------------------------------------------------------- 4: manifest checks
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["levels"][0].update(budget=None), r"levels\[0\]\.budget: expected a number"),
        (lambda d: d["levels"][1].update(budget=2.0), r"levels\[1\]\.budget: expected a number in"),
        (lambda d: d["levels"][1].update(budget=1.0), r"levels\[1\]\.budget: already the budget"),
        (lambda d: d.update(obs_spec=[]), r"obs_spec: expected a mapping"),
        (lambda d: d["obs_spec"].pop("pixels"), r"inputs: must name the obs_spec keys"),
        (
            lambda d: d["obs_spec"]["proprio"].update(shape=[-6]),
            r"obs_spec\['proprio'\]\.shape: expected a list",
        ),
        (
            lambda d: d["obs_spec"]["pixels"].update(dtype="int4"),
            r"obs_spec\['pixels'\]\.dtype: expected 'uint8'",
        ),
        (lambda d: d.update(inputs="proprio"), r"inputs: expected a list"),
        (lambda d: d.update(action_low=[0.0, "x"]), r"action_low: expected a non-empty list"),
        (lambda d: d.update(action_high=[9.0]), r"action_high: expected 2 numbers"),
        (lambda d: d["levels"][1].update(file=d["levels"][0]["file"]), r"levels\[1\]\.file"),
        (lambda d: d["levels"][0].update(int8={"file": "x"}), r"levels\[0\]\.int8: expected"),
    ],
)
def test_malformed_manifest_names_the_path_and_the_field(
    reach_bundle, tmp_path, edit, message
) -> None:
    """Row 2: a bad bundle.json field is a BundleError naming the file and the field --
    not a TypeError, a KeyError at the first act(), or an error blaming the scheduler."""
    bundle = _copy(reach_bundle, tmp_path)
    _edit_manifest(bundle, edit)
    path = re.escape(str(bundle / "bundle.json"))
    with pytest.raises(BundleError, match=f"^{path}: {message}") as err:
        PolicyRuntime.load(bundle)
    assert "\n" not in str(err.value)


def test_graph_that_disagrees_with_the_manifest_is_refused_at_load(tmp_path) -> None:
    """Row 15: each graph's inputs are checked against obs_spec at load, so onnxruntime's
    own error never reaches the user at the first step."""
    bundle = linear_bundle(tmp_path / "b", np.ones((4, 2)))
    _edit_manifest(bundle, lambda d: d["obs_spec"]["proprio"].update(shape=[5]))
    graph = re.escape(str(bundle / "level_1.00.onnx"))
    with pytest.raises(
        BundleError,
        match=rf"^{graph}: graph input 'proprio' has shape \['batch', 4\], but bundle.json "
        r"obs_spec\['proprio'\] says \[5\]",
    ):
        PolicyRuntime.load(bundle)
    _edit_manifest(bundle, lambda d: d["obs_spec"]["proprio"].update(shape=[4], dtype="uint8"))
    with pytest.raises(BundleError, match=rf"^{graph}: graph input 'proprio' is tensor\(float\)"):
        PolicyRuntime.load(bundle)
    _edit_manifest(bundle, lambda d: d.update(action_low=[-1.0] * 3, action_high=[1.0] * 3))
    _edit_manifest(bundle, lambda d: d["obs_spec"]["proprio"].update(dtype="float32"))
    with pytest.raises(BundleError, match=rf"^{graph}: graph output 'action' has shape"):
        PolicyRuntime.load(bundle)


def test_deploy_loop_prints_bundle_errors_as_one_line(
    reach_bundle, tmp_path, monkeypatch, capsys
) -> None:
    """Row 14: the torch-free loop reports a malformed bundle as one `error:` line."""
    monkeypatch.setattr(loop, "block_torch", lambda: None)  # torch is loaded in pytest
    bundle = _copy(reach_bundle, tmp_path)
    _edit_manifest(bundle, lambda d: d["levels"][0].update(budget=None))
    argv = ["--bundle", str(bundle), "--task", "swan_envs/Reach-v0", "--episodes", "1"]
    assert loop.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: {bundle / 'bundle.json'}: levels[0].budget: expected")


# ---------------------------------------------------------------- 5: scheduler ladder
def test_scheduler_is_checked_against_the_bundles_levels(tmp_path) -> None:
    """adaptive:0.2 fits a ladder down to 0.125; it used to be checked against the
    default ladder (down to 0.25) first and refused."""
    sched = PolicyRuntime._make_scheduler("adaptive:0.2", [1.0, 0.5, 0.125])
    assert sched.levels == (1.0, 0.5, 0.125)
    bundle = linear_bundle(tmp_path / "b", np.ones((4, 2)), levels=(1.0, 0.5, 0.125))
    runtime = PolicyRuntime.load(bundle, scheduler="adaptive:0.2")
    assert runtime.levels == (1.0, 0.5, 0.125)
    for _ in range(20):
        runtime.act({"proprio": np.ones(4, np.float32)})
    assert runtime.stats()["mean_budget"] <= 0.2 + 1e-9


# ---------------------------------------------------------------- 6: env kwargs
def test_unknown_env_kwarg_is_one_line(reach_bundle, monkeypatch, capsys) -> None:
    """Row 14: an env constructor refusing a keyword is one `error:` line naming it."""
    monkeypatch.setattr(loop, "block_torch", lambda: None)
    argv = ["--bundle", str(reach_bundle[0]), "--task", "swan_envs/Reach-v0"]
    assert loop.main([*argv, "--episodes", "1", "--env-kwarg", "bogus=1"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: --env-kwarg: swan_envs/Reach-v0 refused the keyword")
    assert "{'bogus': 1}" in lines[0] and "Traceback" not in captured.err


# ---------------------------------------------------------------- 7: unjudged int8
def _with_int8(tmp_path: Path, verdict: dict | None) -> Path:
    """A one-level bundle with an int8 candidate (a copy of the fp32 graph scaled by 2,
    so the two are told apart) and the given closed-loop verdict (None: none)."""
    bundle = linear_bundle(tmp_path / "q", np.ones((4, 2)))
    linear_bundle(tmp_path / "q2", 2 * np.ones((4, 2)))
    int8 = bundle / level_file(1.0, ".int8")
    shutil.copy(tmp_path / "q2" / level_file(1.0), int8)
    entry = {"file": int8.name, "sha256": sha256_file(int8), **(verdict or {})}
    _edit_manifest(bundle, lambda d: d["levels"][0].update(int8=entry))
    return bundle


def test_unjudged_int8_graphs_are_refused(tmp_path) -> None:
    """An int8 graph without a closed-loop verdict (interrupted export, or
    export_bundle(int8=True) called directly) counts as not kept: precision int8 is
    refused, saying how to judge it; fp32 still loads."""
    obs = {"proprio": np.full(4, 0.1, np.float32)}
    bundle = _with_int8(tmp_path / "a", None)
    with pytest.raises(BundleError) as err:
        PolicyRuntime.load(bundle, precision="int8")
    text = str(err.value)
    head = f"{bundle / 'bundle.json'}: the int8 graphs of levels 1 were never judged in"
    assert text.startswith(head + " closed loop"), text
    assert "swan export --int8 --eval-episodes" in text and "\n" not in text
    np.testing.assert_allclose(PolicyRuntime.load(bundle).act(obs), [0.4, 0.4], rtol=1e-6)
    # the export's own judgement runs the candidates
    judged = PolicyRuntime.load(bundle, precision="int8", int8_unjudged=True)
    np.testing.assert_allclose(judged.act(obs), [0.8, 0.8], rtol=1e-6)
    kept = _with_int8(tmp_path / "b", {"kept": True})
    np.testing.assert_allclose(
        PolicyRuntime.load(kept, precision="int8").act(obs), [0.8, 0.8], rtol=1e-6
    )
    dropped = _with_int8(tmp_path / "c", {"kept": False})
    np.testing.assert_allclose(
        PolicyRuntime.load(dropped, precision="int8").act(obs), [0.4, 0.4], rtol=1e-6
    )


def test_the_exports_closed_loop_judges_unjudged_int8_graphs(tmp_path, monkeypatch) -> None:
    """`swan export --int8` judges its candidates by running them in closed loop before
    they have a verdict: that one caller may load them."""
    from swan_policy.export.pipeline import closed_loop

    actions: list[np.ndarray] = []

    def one_step(runtime, env, episodes, seed, rate_hz=None):
        actions.append(runtime.act({"proprio": np.full(4, 0.1, np.float32)}))
        return {"success_rate": 1.0, "return_mean": 0.0, "latency": {"overall": {}}}

    monkeypatch.setattr(loop, "make_sim_env", lambda task, kwargs: SimpleNamespace(close=dict))
    monkeypatch.setattr(loop, "run_control_loop", one_step)
    cfg = SimpleNamespace(env=SimpleNamespace(id="swan_envs/Reach-v0", kwargs={}))
    bundle = _with_int8(tmp_path, None)
    out = closed_loop(bundle, cfg, [1.0], 1, 0, precision="int8")  # type: ignore[arg-type]  # a stand-in config
    assert out[1.0]["success_rate"] == 1.0
    np.testing.assert_allclose(actions[0], [0.8, 0.8], rtol=1e-6)  # the int8 graph ran


# ---------------------------------------------------------------- 8: load arguments
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window: must be an integer >= 1, got 0"),
        ({"window": 2.5}, "window: must be an integer >= 1, got 2.5"),
        ({"threads": 0}, "threads: must be an integer >= 1, got 0"),
        ({"deadline_ms": float("nan")}, "deadline_ms: must be finite and > 0, got nan"),
        ({"deadline_ms": 0.0}, "deadline_ms: must be finite and > 0, got 0.0"),
    ],
)
def test_bad_numeric_load_arguments_are_refused_at_load(reach_bundle, kwargs, message) -> None:
    """window=0 used to load and then raise ZeroDivisionError in act()."""
    with pytest.raises(ValueError) as err:
        PolicyRuntime.load(reach_bundle[0], **kwargs)
    assert str(err.value) == message


# ---------------------------------------------------------------- 9: failed steps
class _Recorder(Scheduler):
    """Alternates 1.0 and 0.5 and records every latency attributed to a level."""

    kind = "recorder"

    def __init__(self) -> None:
        super().__init__((1.0, 0.5))
        self.seen: list[tuple[float, float]] = []

    def observe_latency(self, level: float, ms: float) -> None:
        self.seen.append((level, ms))

    def _choose(self, step: StepInfo) -> float:
        return 1.0 if step.step % 2 == 0 else 0.5


def test_a_failed_step_leaves_no_stale_latency(reach_bundle) -> None:
    """A step that fails after the scheduler ran (an onnxruntime error) must not leave the
    previous step's forward time behind, to be attributed to the failed step's level."""
    recorder = _Recorder()
    runtime = PolicyRuntime.load(reach_bundle[0], scheduler=recorder)
    runtime._sessions[0.5] = _Spy(runtime._sessions[0.5])  # type: ignore[assignment]  # a spy
    runtime.act(one_obs(0))  # step 0 at 1.0
    runtime._sessions[0.5].fail_next = True  # type: ignore[attr-defined]  # the spy above
    with pytest.raises(RuntimeError, match="injected"):
        runtime.act(one_obs(1))  # step 1 at 0.5: gets 1.0's latency, then fails
    runtime.act(one_obs(2))  # step 1 again (the failed step did not count)
    assert [level for level, _ in recorder.seen] == [1.0]  # nothing blamed on 0.5


# ---------------------------------------------------------------- 10: non-finite rates
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate", "nan"], "error: --rate: must be a finite number >= 0, got nan"),
        (["--rate", "inf"], "error: --rate: must be a finite number >= 0, got inf"),
        (["--deadline-ms", "nan"], "error: --deadline-ms: must be a finite number > 0, got nan"),
        (["--deadline-ms", "inf"], "error: --deadline-ms: must be a finite number > 0, got inf"),
    ],
)
def test_non_finite_rate_and_deadline_are_one_line(
    reach_bundle, monkeypatch, capfd, flags, message
) -> None:
    """Row 14: a NaN rate made every step an overrun and put NaN in the JSON."""
    monkeypatch.setattr(loop, "block_torch", lambda: None)
    argv = ["--bundle", str(reach_bundle[0]), "--task", "swan_envs/Reach-v0", "--episodes", "1"]
    assert loop.main([*argv, *flags]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == [message], lines
    # `swan deploy` refuses it before starting the loop (click's range check already
    # caught `--rate nan`, with its own words)
    assert swan_main(["deploy", *argv, *flags]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flags[0] in lines[0], lines
    with pytest.raises(ValueError, match="--rate: must be a finite number"):
        loop.run_control_loop(None, None, 1, rate_hz=float("nan"))

"""``swan inspect``: gate traces, figures, video and summary (swan_policy/inspect.py)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from swan_policy.budget.schedulers import make_scheduler
from swan_policy.cli import load_run_policy, main
from swan_policy.config import load_config
from swan_policy.inspect import (
    VIDEO_SIZE,
    Trace,
    last_step_gates,
    make_inspect_env,
    phase_segments,
    phase_specific_units,
    summarise_gates,
    trace_episode,
)
from swan_policy.policy import SwanPolicy
from tests.conftest import random_obs, tiny_config
from tests.reliability._runs import tiny_train

LAYERS = {"encoder.layers.0": 4, "encoder.layers.1": 4, "head.layers.0": 8}


@pytest.fixture(scope="module")
def tiny_run(demos16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-step BC run on Reach-v0 at 16x16 (gates start undecided: init_bias 0)."""
    run = tmp_path_factory.mktemp("inspect") / "run"
    argv = tiny_train(demos16, "policy.gate.init_bias=0.0")
    assert main([*argv, "--run-dir", str(run), "--quiet"]) == 0
    return run


def swan(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console script, as a user runs it."""
    exe = Path(sys.executable).parent / "swan"
    env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1", MUJOCO_GL="egl")
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=env, check=False, timeout=120
    )


def test_inspect_end_to_end(tiny_run: Path) -> None:
    import imageio.v2 as imageio
    from PIL import Image

    proc = swan("inspect", "--run", str(tiny_run), "--episodes", "1", "--budget", "0.5")
    assert proc.returncode == 0, proc.stderr
    assert "head.layers.0" in proc.stdout
    out = tiny_run / "inspect"  # the default --out
    files = {"ep0_gates.png", "ep0_phases.png", "ep0.mp4", "ep0_trace.npz"}
    assert {p.name for p in out.iterdir()} == files | {"summary.txt", "summary.json"}

    for name in ("ep0_gates.png", "ep0_phases.png"):
        with Image.open(out / name) as im:
            im.load()
            assert min(im.size) >= 200, (name, im.size)

    summary = json.loads((out / "summary.json").read_text())
    for key in ("run", "checkpoint", "env", "seed", "budget", "scheduler", "criteria"):
        assert key in summary
    assert summary["env"] == "swan_envs/Reach-v0" and summary["budget"] == 0.5
    assert summary["criteria"] == {"phase_high": 0.9, "phase_low": 0.1, "min_phase_steps": 5}
    (ep,) = summary["episodes"]
    assert ep["seed"] == 10_000 and ep["files"]["video"] == "ep0.mp4"
    assert set(ep["files"].values()) == files
    length = ep["length"]
    assert 0 < length <= 50 and summary["steps"] == length
    assert summary["phases"] == {"reach": length} and summary["unseen_phases"] == []
    assert summary["success_rate"] == float(ep["success"])

    reader = imageio.get_reader(out / "ep0.mp4")
    frames = list(reader.iter_data())  # list(reader) asks len(): inf for mp4
    reader.close()
    assert len(frames) == length
    assert frames[0].shape == (*VIDEO_SIZE, 3)

    trace = np.load(out / "ep0_trace.npz")
    assert list(trace["phases"]) == ["reach"] * length
    np.testing.assert_array_equal(trace["budgets"], np.full(length, 0.5))
    assert set(summary["layers"]) == set(LAYERS)
    for name, units in LAYERS.items():
        s = summary["layers"][name]
        g = trace[f"gates.{name}"]
        assert g.shape == (length, units) and s["units"] == units
        assert set(np.unique(g)) <= {0, 1}
        # the budget caps every step at ceil(b * N) active units
        assert g.sum(axis=1).max() <= math.ceil(0.5 * units)
        np.testing.assert_allclose(s["unit_frequency"], g.mean(axis=0))
        assert s["never_active"] == np.flatnonzero(g.sum(axis=0) == 0).tolist()
        assert s["always_active"] == np.flatnonzero(g.sum(axis=0) == length).tolist()
        assert s["mean_active_fraction"] == pytest.approx(g.mean())
        assert s["active_fraction_per_phase"] == {"reach": pytest.approx(g.mean())}
        assert s["phase_specific"] == {}  # one phase: nothing to be specific against
    text = (out / "summary.txt").read_text()
    assert "never active" in text and "encoder.layers.0 (4 units)" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "error: --out: {out} exists and is not empty (pass --overwrite to replace it)"),
        (["--budget", "1.5"], "error: --budget: must be in (0, 1], got 1.5"),
        (
            ["--budget", "0.5", "--scheduler", "adaptive:0.4"],
            "error: --budget and --scheduler exclude each other",
        ),
        (["--scheduler", "adaptive"], "error: --scheduler: scheduler.target: required"),
    ],
)
def test_user_errors_are_one_line(
    tiny_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = ["inspect", "--run", str(tiny_run), "--out", str(out), "--no-video", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(out=out)), err
    assert (out / "keep.txt").read_text() == "mine"


def test_trace_follows_the_scheduler(tiny_run: Path) -> None:
    cfg = load_config(tiny_run / "config.yaml")
    policy = load_run_policy(tiny_run)
    env = make_inspect_env(cfg.env)
    try:
        sched = make_scheduler({"kind": "schedule", "steps": [[0, 1.0], [3, 0.25]]})
        trace = trace_episode(policy, env, 7, sched)
    finally:
        env.close()
    assert trace.length > 3
    np.testing.assert_array_equal(trace.budgets[:3], 1.0)
    np.testing.assert_array_equal(trace.budgets[3:], 0.25)
    head = trace.gates["head.layers.0"]
    assert head.dtype == bool and head[3:].sum(axis=1).max() <= 2  # ceil(0.25 * 8)
    assert trace.phases == ["reach"] * trace.length


def test_trace_restores_the_policy_mode(tiny_run: Path) -> None:
    """A policy in training mode is back in training mode after a traced episode."""
    cfg = load_config(tiny_run / "config.yaml")
    policy = load_run_policy(tiny_run).train()
    env = make_inspect_env(cfg.env)
    try:
        trace_episode(policy, env, 3, make_scheduler("fixed:1.0"))
        assert policy.training
        policy.eval()
        trace_episode(policy, env, 3, make_scheduler("fixed:1.0"))
        assert not policy.training
    finally:
        env.close()


@pytest.mark.parametrize("budget", [1.0, 0.5])
def test_batch1_fast_path_exposes_the_masked_gates(budget: float) -> None:
    """What inspect records from ``act`` (numpy fast path) is the masked forward's gates."""
    cfg = tiny_config()
    torch.manual_seed(0)
    policy = SwanPolicy(cfg).eval()
    for seed in range(5):
        obs = random_obs(cfg, 1, seed)
        policy.act({k: v[0].numpy() for k, v in obs.items()}, budget)
        fast = last_step_gates(policy)
        with torch.inference_mode():
            policy(obs, budget, mode="masked")
        masked = last_step_gates(policy)
        assert set(fast) == set(masked) == set(policy.gates())
        for name in fast:
            np.testing.assert_array_equal(fast[name], masked[name], err_msg=name)


def test_phase_specific_units() -> None:
    phases = ["A"] * 10 + ["B"] * 10 + ["C"] * 3  # C: fewer than min_steps, not judged
    g = np.zeros((23, 7), dtype=bool)
    g[:10, 0] = True  # A only -> A
    g[10:20, 1] = True  # B only -> B
    g[:, 2] = True  # always: specific to nothing
    g[:9, 3] = True  # 90% of A ...
    g[10, 3] = True  # ... and 10% of B: both bounds inclusive -> A
    g[:8, 4] = True  # 80% of A: not enough
    g[:10, 5] = True  # A, and the unjudged C -> A
    g[20:, 5] = True
    # unit 6 never active
    assert phase_specific_units(g, phases) == {"A": [0, 3, 5], "B": [1]}
    assert phase_specific_units(g, phases, min_steps=3) == {"A": [0, 3], "B": [1], "C": []}
    assert phase_specific_units(g, phases, high=0.95) == {"A": [0, 5], "B": [1]}
    assert phase_specific_units(g[:10], phases[:10]) == {}  # one judged phase
    with pytest.raises(ValueError, match="one phase per step"):
        phase_specific_units(g, phases[:5])


def test_summarise_gates_pools_episodes() -> None:
    def trace(seed: int, gates: np.ndarray, phases: list[str]) -> Trace:
        n = len(phases)
        return Trace(seed, {"l": gates}, np.full(n, 0.5), phases, np.ones(n), seed == 1)

    a = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 1], [1, 0, 0]], dtype=bool)
    b = np.array([[1, 0, 1], [1, 0, 1]], dtype=bool)
    s = summarise_gates(
        [trace(1, a, ["x", "x", "y", "y"]), trace(2, b, ["y", "y"])],
        known_phases=("x", "y", "z"),
    )
    layer = s["layers"]["l"]
    assert layer["never_active"] == [1] and layer["always_active"] == [0]
    assert layer["unit_frequency"] == pytest.approx([1.0, 0.0, 4 / 6])
    assert layer["active_fraction_per_phase"] == pytest.approx({"x": 1.5 / 3, "y": 7 / 12})
    assert s["phases"] == {"x": 2, "y": 4} and s["unseen_phases"] == ["z"]
    assert s["success_rate"] == 0.5 and s["return_mean"] == 3.0 and s["steps"] == 6
    assert [e["phases"] for e in s["episodes"]] == [{"x": 2, "y": 2}, {"y": 2}]


def test_phase_segments() -> None:
    assert phase_segments(["a", "a", "b", "a"]) == [("a", 0, 2), ("b", 2, 3), ("a", 3, 4)]
    assert phase_segments([]) == []

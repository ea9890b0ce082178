"""scripts/bench_tradeoff.py end to end on a tiny configuration (issue 8)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio

from tests.reliability._runs import set_args, tiny_policy

REPO = Path(__file__).resolve().parents[1]
ARMS = {
    "swan-dynamic",
    "swan-ladder",
    "swan-adaptive",
    "swan-ladder-ft",
    "dense",
    "scratch",
    "pruned",
    "pruned-noft",
    "slimmable",
}


def _tiny_sets(tmp_path: Path, checkpoint_every: int) -> list[str]:
    """A few BC steps of a tiny Reach policy on 2 demos (collected into ``tmp_path``)."""
    return [
        *tiny_policy(),
        f"demos.path={tmp_path / 'demos.hdf5'}",
        "demos.episodes=2",
        "demos.workers=1",
        "bc.steps=4",
        "bc.batch_size=8",
        "bc.warmup_steps=1",
        "dagger.rounds=0",
        f"log.checkpoint_every={checkpoint_every}",
        "log.tensorboard=false",
    ]


def test_tradeoff_benchmark_writes_table_json_and_plot(tmp_path: Path) -> None:
    sets = _tiny_sets(tmp_path, checkpoint_every=4)
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "bench_tradeoff.py"),
        "--seeds",
        "0",
        "--episodes",
        "1",
        "--calib-episodes",
        "1",
        "--levels",
        "0.5",
        "--workers",
        "1",
        "--quiet",
        "--out",
        str(tmp_path / "runs"),
        "--docs",
        str(tmp_path / "docs"),
        *set_args(sets),
    ]
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}

    def bench(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cmd, *extra], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path
        )

    # the full-width dense arm alone needs no SWAN run (so it can train beside it)
    alone = bench("--arms", "dense")
    assert alone.returncode == 0, alone.stderr[-3000:]
    seed_dir = tmp_path / "runs" / "reach" / "seed0"
    dense_done = seed_dir / "dense" / "bench_done.json"
    assert dense_done.exists() and not (seed_dir / "swan").exists()
    dense_stamp = dense_done.stat().st_mtime_ns
    only = json.loads((tmp_path / "docs" / "tradeoff_reach.json").read_text())["rows"]
    assert [(r["arm"], r["of_dense"]) for r in only] == [("dense", 1.0)]

    proc = bench()
    assert proc.returncode == 0, proc.stderr[-3000:]
    docs = tmp_path / "docs"
    result = json.loads((docs / "tradeoff_reach.json").read_text())
    assert {"task", "variation", "seeds", "episodes", "rows", "checks", "command"} <= set(result)
    assert result["task"] == "swan_envs/Reach-v0" and result["seeds"] == [0]
    rows = result["rows"]
    assert {r["arm"] for r in rows} == ARMS
    for r in rows:
        assert 0.0 <= r["success_mean"] <= 1.0 and r["macs"] > 0
        assert len(r["success_per_seed"]) == 1
        if "target_macs" in r:  # the baselines' MACs match their level within 5%
            assert abs(r["macs"] / r["target_macs"] - 1.0) <= 0.05, r
    for r in (r for r in rows if r["arm"] == "slimmable"):  # the prefix it was evaluated at
        assert len(r["prefix_budget"]) == 1 and 0.0 < r["prefix_budget"][0] <= 1.0, r
        assert (r["level"] == 1.0) == (r["prefix_budget"] == [1.0]), r
    dense = next(r for r in rows if r["arm"] == "dense")
    assert dense["of_dense"] == 1.0
    assert dense["success_per_seed"] == only[0]["success_per_seed"]  # the same run, reused
    assert dense_done.stat().st_mtime_ns == dense_stamp  # not trained again
    level = next(r for r in rows if r["arm"] == "swan-ladder")
    assert level["level"] == 0.5 and level["of_dense"] < 1.0
    assert {"swan_at_25pct", "ladder_ahead", "ladder_ahead_everywhere"} <= set(result["checks"])
    table = (docs / "tradeoff_reach.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # header + one line per row
    png = imageio.imread(docs / "tradeoff_reach.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100

    # --merge re-runs some arms (finished trainings are reused) and keeps the others' rows
    again = bench("--arms", "dense", "--merge")
    assert again.returncode == 0, again.stderr[-3000:]
    merged = json.loads((docs / "tradeoff_reach.json").read_text())
    assert {r["arm"] for r in merged["rows"]} == ARMS
    assert len(merged["commands"]) == 2 and merged["command"] == result["command"]
    assert merged["minutes"] > result["minutes"]  # both commands' time
    assert "train" not in again.stdout  # nothing retrained
    dense_again = next(r for r in merged["rows"] if r["arm"] == "dense")
    assert dense_again["success_per_seed"] == dense["success_per_seed"]  # same episodes

    # a reused SWAN run must have the config's architecture: the baselines are built from it
    reuse = ("--reuse-swan", str(seed_dir / "swan"), "--set", "policy.head.hidden=[24, 24]")
    other_arch = bench("--arms", "swan", *reuse)
    assert other_arch.returncode != 0
    assert "is not the config's" in other_arch.stderr, other_arch.stderr[-3000:]

    # --combine aggregates per-seed outputs without training or evaluating anything
    other = json.loads(json.dumps(merged))
    other["seeds"] = [1]
    for r in other["per_seed"][0]:
        r["success"] = 1.0 - r["success"]
    (tmp_path / "seed1.json").write_text(json.dumps(other))
    (tmp_path / "seed0.json").write_text(json.dumps(merged))
    combine = [
        sys.executable,
        str(REPO / "scripts" / "bench_tradeoff.py"),
        "--docs",
        str(tmp_path / "combined"),
        "--combine",
        str(tmp_path / "seed0.json"),
        str(tmp_path / "seed1.json"),
    ]
    both = subprocess.run(combine, capture_output=True, text=True, env=env, timeout=120)
    assert both.returncode == 0, both.stderr[-3000:]
    out = json.loads((tmp_path / "combined" / "tradeoff_reach.json").read_text())
    assert out["seeds"] == [0, 1] and len(out["commands"]) == 2 * len(merged["commands"]) + 1
    for r in out["rows"]:
        assert len(r["success_per_seed"]) == 2 and abs(r["success_mean"] - 0.5) < 1e-9
    assert imageio.imread(tmp_path / "combined" / "tradeoff_reach.png").ndim == 3
    # refused: a seed twice; files from other settings
    same = subprocess.run(
        [*combine[:-1], str(tmp_path / "seed0.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert same.returncode != 0 and "a seed appears twice" in same.stderr
    other["episodes"] = 7
    (tmp_path / "seed1.json").write_text(json.dumps(other))
    diff = subprocess.run(combine, capture_output=True, text=True, env=env, timeout=120)
    assert diff.returncode != 0 and "differ in episodes" in diff.stderr
    other["episodes"] = merged["episodes"]
    other["per_seed"][0] = [r for r in other["per_seed"][0] if r["arm"] != "slimmable"]
    (tmp_path / "seed1.json").write_text(json.dumps(other))
    part = subprocess.run(combine, capture_output=True, text=True, env=env, timeout=120)
    assert part.returncode == 0, part.stderr[-3000:]
    assert "lacks seeds [1]" in part.stdout  # a row some seeds lack: averaged over the others
    out = json.loads((tmp_path / "combined" / "tradeoff_reach.json").read_text())
    for r in out["rows"]:
        assert r["seeds"] == ([0] if r["arm"] == "slimmable" else [0, 1]), r
        assert len(r["success_per_seed"]) == len(r["seeds"])
    slim = [r for r in out["rows"] if r["arm"] == "slimmable"]
    assert slim and all(
        r["success_per_seed"] == [m["success_per_seed"][0]]
        for r, m in zip(slim, (m for m in merged["rows"] if m["arm"] == "slimmable"), strict=True)
    )


def test_tradeoff_refuses_a_run_another_process_is_training(tmp_path: Path) -> None:
    """Two processes sharing a run: the second stops with an error instead of deleting it."""
    seed_dir = tmp_path / "runs" / "reach" / "seed0"
    seed_dir.mkdir(parents=True)
    (seed_dir / "swan").mkdir()
    (seed_dir / "swan" / "partial").write_text("another process's files")
    cmd = [
        sys.executable,
        str(REPO / "scripts" / "bench_tradeoff.py"),
        "--seeds",
        "0",
        "--arms",
        "swan",
        "--out",
        str(tmp_path / "runs"),
        "--docs",
        str(tmp_path / "docs"),
        *set_args([*tiny_policy(), f"demos.path={tmp_path / 'demos.hdf5'}"]),
    ]
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}
    with open(seed_dir / "swan.lock", "w") as held:  # this process "trains" the SWAN run
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "is being trained by another process" in proc.stderr, proc.stderr[-3000:]
    assert (seed_dir / "swan" / "partial").exists()  # left alone
    assert not (tmp_path / "demos.hdf5").exists() and not (tmp_path / "docs").exists()


def test_tradeoff_resumes_an_interrupted_arm_with_its_minutes(tmp_path: Path) -> None:
    """``--resume`` continues an arm cut after a checkpoint and adds up its segments'
    minutes; without it the arm starts again from step 0."""
    import shutil

    sets = _tiny_sets(tmp_path, checkpoint_every=2)
    base = [sys.executable, str(REPO / "scripts" / "bench_tradeoff.py"), "--seeds", "0"]
    base += ["--arms", "dense", "--episodes", "1", "--workers", "1", "--quiet"]
    env = {**os.environ, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1"}

    def bench(out: Path, *extra: str) -> tuple[list[tuple[int, bool]], dict]:
        cmd = [*base, "--out", str(out), "--docs", str(out / "docs"), *set_args(sets), *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = out / "reach" / "seed0" / "dense"
        lines = (run / "metrics.jsonl").read_text().splitlines()
        starts = [(r["step"], r["resumed"]) for r in map(json.loads, lines) if r["kind"] == "start"]
        return starts, json.loads((run / "bench_done.json").read_text())

    first = tmp_path / "a"
    assert bench(first)[0] == [(0, False)]
    run = first / "reach" / "seed0" / "dense"
    for out in (tmp_path / "resumed", tmp_path / "again"):  # cut after the step-2 checkpoint
        cut = out / "reach" / "seed0" / "dense"
        shutil.copytree(run, cut)
        (cut / "bench_done.json").unlink()
        shutil.rmtree(cut / "checkpoints" / "step_4")
        (cut / "checkpoints" / "last").write_text("step_2\n")
        stamp = (cut / "metrics.jsonl").stat().st_mtime
        segment = {"minutes_before": 2.0, "started": stamp - 60.0}  # 3 minutes so far
        (cut / "bench_segment.json").write_text(json.dumps(segment))
    starts, done = bench(tmp_path / "resumed", "--resume")
    assert starts == [(0, False), (2, True)]
    assert done["resumed"] is True and 3.0 <= done["minutes"] < 13.0
    starts, done = bench(tmp_path / "again")
    assert starts == [(0, False)] and "resumed" not in done and done["minutes"] < 3.0


def test_combine_checks_the_dynamic_gates_against_static_arms_at_matched_macs(
    tmp_path: Path,
) -> None:
    """``checks.dynamic_ahead``: SWAN's one model at a level's budget against pruned and
    scratch at that level, where its executed MACs are within 5% of theirs."""

    def row(arm: str, level: float | None, success: float, macs: float) -> dict[str, object]:
        return {"arm": arm, "level": level, "success": success, "return": 0.0, "macs": macs}

    def seed_file(seed: int, dyn_low: float) -> Path:
        rows = [
            row("dense", 1.0, 0.5, 100.0),
            row("swan-dynamic", 0.5, 0.6, 27.0),
            row("swan-dynamic", 0.25, dyn_low, 9.0),  # 9 > 1.05 x 8: not matched
            row("pruned", 0.5, 0.4, 27.0),
            row("scratch", 0.5, 0.5, 27.5),
            row("pruned", 0.25, 0.1, 8.0),
        ]
        for r in rows:
            r["dense_macs"] = 100.0
        meta = {"task": "swan_envs/Reach-v0", "variation": "none", "episodes": 10}
        data = {**meta, "eval_seed": 10_000, "levels": [0.5, 0.25], "seeds": [seed]}
        data |= {"per_seed": [rows], "command": "synthetic"}
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps(data))
        return path

    files = [seed_file(0, 0.3), seed_file(1, 0.5)]
    cmd = [sys.executable, str(REPO / "scripts" / "bench_tradeoff.py"), "--combine"]
    proc = subprocess.run(
        [*cmd, *map(str, files), "--docs", str(tmp_path / "docs")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    checks = json.loads((tmp_path / "docs" / "tradeoff_reach.json").read_text())["checks"]
    got = {(d["level"], d["vs"]): (d["ahead"], d["matched"]) for d in checks["dynamic_ahead"]}
    assert got == {
        (0.5, "pruned"): (True, True),
        (0.5, "scratch"): (True, True),
        (0.25, "pruned"): (True, False),
    }
    assert checks["dynamic_ahead_everywhere"] is False  # 0.25 spends 12.5% more MACs

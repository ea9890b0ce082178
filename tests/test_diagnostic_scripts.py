"""The diagnostic scripts behind docs/results.md figures run on a tiny trained run
(``reference_run``, tests/conftest.py: read-only, the scripts only read it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / name), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)


def test_imitation_gap_reports_both_drivers(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "gap.json"
    proc = _script(
        "imitation_gap.py", "--run", str(reference_run), "--episodes", "2", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    overall = {r["driver"]: r for r in rows if r["phase"] == "all"}
    assert set(overall) == {"expert", "policy"}
    assert overall["expert"]["success"] == 1.0  # the expert drove: it solves Reach
    for r in rows:
        assert len(r["gap_per_dim"]) == 2 and r["steps"] > 0
        assert 0.0 <= r["gap"] <= 2.0  # actions live in [-1, 1]
    assert "states of" in proc.stdout and "policy" in proc.stdout  # the table


def test_failure_distances_runs(reference_run: Path) -> None:
    proc = _script("failure_distances.py", "--run", str(reference_run), "--episodes", "2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 2 and 0 <= summary["failures"] <= 2
    assert len(summary["rows"]) == summary["failures"]
    for row in summary["rows"]:  # Reach: 2 action dims, the expert's one phase
        assert len(row["tail_policy"]) == len(row["tail_expert"]) == 2
        assert row["tail_phases"] == ["reach"]


def test_variation_failures_records_what_each_reset_drew(
    reference_run: Path, tmp_path: Path
) -> None:
    """Reach has no variation by default: every factor at its default. With
    ``--variation appearance`` the light and camera differ per episode, and no distractor."""
    results = {}
    for variation in ("none", "appearance"):
        out = tmp_path / f"{variation}.json"
        args = ["--run", str(reference_run), "--episodes", "3", "--variation", variation]
        proc = _script("variation_failures.py", *args, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        results[variation] = json.loads(out.read_text())
        assert "success" in proc.stdout
    plain, varied = results["none"], results["appearance"]
    for result in (plain, varied):
        assert result["episodes"] == 3 and len(result["rows"]) == 3
        assert {r["end_phase"] for r in result["rows"]} <= {"reach"}
    assert plain["thirds"] == {}  # nothing varies
    assert "distractors" not in varied["thirds"]  # constant under "appearance"
    thirds = varied["thirds"]["light_scale"]
    assert [p["episodes"] for p in thirds] == [1, 1, 1]  # 3 episodes, one per third
    assert thirds[0]["to"] < thirds[1]["from"] and thirds[1]["to"] < thirds[2]["from"]
    assert {r["factors"]["light_scale"] for r in plain["rows"]} == {1.0}
    assert {r["factors"]["camera_shift_cm"] for r in plain["rows"]} == {0.0}
    assert len({r["factors"]["light_scale"] for r in varied["rows"]}) == 3
    assert all(0 < r["factors"]["camera_shift_cm"] <= 100 * 0.015 * 3**0.5 for r in varied["rows"])
    assert {r["factors"]["distractors"] for r in varied["rows"]} == {0.0}
    assert set(varied["rows"][0]["factors"]) >= {"target_contrast", "fingertip_contrast"}


def test_bench_imitation_keeps_each_seeds_evaluation_and_reuses_it(
    reference_run: Path, tmp_path: Path
) -> None:
    """Seeds trained in parallel processes are aggregated by one more call: a finished
    seed's evaluation is read back, not played again, unless the episodes change."""
    import shutil

    from swan_policy.train.checkpoint import latest_checkpoint
    from tests.reliability._runs import CONFIG, set_args, tiny_policy

    run = tmp_path / "out" / "reach_bc-seed0"
    shutil.copytree(reference_run, run)
    last = latest_checkpoint(run)
    assert last is not None
    shutil.copytree(last, run / "best")  # a finished run: the bench does not train it
    args = ["--config", CONFIG, "--seeds", "0", "--budgets", "1", "0.5", "--workers", "1"]
    args += ["--out", str(tmp_path / "out"), *set_args(tiny_policy(16, hidden="[8]"))]

    def bench(episodes: int) -> tuple[dict, int]:
        proc = _script("bench_imitation.py", *args, "--episodes", str(episodes))
        assert proc.returncode == 0, proc.stderr
        summary = json.loads((tmp_path / "out" / "reach_bc.json").read_text())
        return summary, (run / "bench_eval.json").stat().st_mtime_ns

    first, stamp = bench(1)
    assert [r["budget"] for r in first["seeds"][0]["results"]] == [1.0, 0.5]
    again, stamp_again = bench(1)
    assert again == first and stamp_again == stamp  # read back, not evaluated again
    more, stamp_more = bench(2)
    assert stamp_more != stamp and more["seeds"][0]["results"][0]["episodes"] == 2
    back, stamp_back = bench(1)  # the 1-episode evaluation was kept beside the new one
    assert back["seeds"] == first["seeds"] and stamp_back == stamp_more
    # a file from before several evaluations were kept: read, not evaluated again
    legacy = {
        "key": {"episodes": 2, "budgets": [1.0, 0.5], "eval_seed": 10000},
        **more["seeds"][0],
        "train_minutes": 12.5,
    }
    (run / "bench_eval.json").write_text(json.dumps(legacy))
    stamp_legacy = (run / "bench_eval.json").stat().st_mtime_ns
    old, stamp_old = bench(2)
    assert stamp_old == stamp_legacy and old["seeds"][0]["train_minutes"] == 12.5
    assert old["seeds"][0]["results"] == more["seeds"][0]["results"]


def test_bench_imitation_evaluates_the_last_checkpoint_on_request(
    reference_run: Path, tmp_path: Path
) -> None:
    """``--checkpoint last`` plays the run's last checkpoint, not its best policy, and
    keeps that evaluation beside the best one's."""
    import shutil

    from swan_policy.cli import load_run_policy
    from swan_policy.config import load_config
    from swan_policy.evaluate import evaluate_policy
    from tests.reliability._runs import CONFIG, set_args, tiny_policy

    run = tmp_path / "out" / "reach_bc-seed0"
    shutil.copytree(reference_run, run)
    shutil.copytree(run / "checkpoints" / "step_2", run / "best")  # best: an early policy
    tiny = tiny_policy(16, hidden="[8]")
    args = ["--config", CONFIG, "--seeds", "0", "--budgets", "1", "--workers", "1"]
    args += ["--episodes", "2", "--out", str(tmp_path / "out"), *set_args(tiny)]

    def bench(*flags: str) -> dict:
        proc = _script("bench_imitation.py", *args, *flags)
        assert proc.returncode == 0, proc.stderr
        return json.loads((tmp_path / "out" / "reach_bc.json").read_text())["seeds"][0]

    best = bench()["results"][0]
    last = bench("--checkpoint", "last")["results"][0]
    cfg = load_config(Path(CONFIG), tiny)
    for which, got in (("best", best), ("last", last)):
        want = evaluate_policy(load_run_policy(run, which), cfg.env, 2, [1.0], 1, cfg.eval.seed)
        assert got["return_mean"] == pytest.approx(want[0].return_mean, rel=1e-5)
    assert last["return_mean"] != best["return_mean"]  # two different policies
    keys = [e["key"] for e in json.loads((run / "bench_eval.json").read_text())["evals"]]
    assert [k.get("checkpoint") for k in keys] == [None, "last"]


def test_bench_imitation_resumes_an_interrupted_seed_with_its_minutes(
    reference_run: Path, demos16: Path, tmp_path: Path
) -> None:
    """``--resume`` continues an unfinished seed from its last checkpoint and adds up the
    training time of its segments; without it the seed starts again."""
    import shutil

    from swan_policy.train.checkpoint import latest_checkpoint
    from tests.conftest import tiny_train
    from tests.reliability._runs import CONFIG

    def interrupted(out: Path) -> Path:  # the reference run, cut after its step-4 checkpoint
        run = out / "reach_bc-seed0"
        shutil.copytree(reference_run, run)
        shutil.rmtree(run / "checkpoints" / "step_6")
        (run / "checkpoints" / "last").write_text("step_4\n")
        stamp = (run / "metrics.jsonl").stat().st_mtime
        segment = {"minutes_before": 2.0, "started": stamp - 60.0}  # 2 + 1 minutes so far
        (run / "bench_segment.json").write_text(json.dumps(segment))
        return run

    def bench(out: Path, *flags: str) -> tuple[list[dict], float]:
        args = ["--config", CONFIG, "--seeds", "0", "--budgets", "1", "--workers", "1"]
        args += ["--episodes", "1", "--out", str(out), *tiny_train(demos16)[3:], *flags]
        proc = _script("bench_imitation.py", *args)
        assert proc.returncode == 0, proc.stderr
        lines = (out / "reach_bc-seed0" / "metrics.jsonl").read_text().splitlines()
        starts = [r for r in map(json.loads, lines) if r.get("kind") == "start"]
        summary = json.loads((out / "reach_bc.json").read_text())
        return starts, summary["seeds"][0]["train_minutes"]

    run = interrupted(tmp_path / "resumed")
    starts, minutes = bench(tmp_path / "resumed", "--resume")
    assert [(s["step"], s["resumed"]) for s in starts] == [(0, False), (4, True)]
    assert (run / "checkpoints" / "step_2").is_dir()  # kept, not trained again
    assert latest_checkpoint(run) == run / "checkpoints" / "step_6"
    assert 3.0 <= minutes < 13.0  # 3 minutes before, and this call's few seconds

    interrupted(tmp_path / "again")
    starts, minutes = bench(tmp_path / "again")
    assert [(s["step"], s["resumed"]) for s in starts] == [(0, False)]
    assert minutes < 2.0


def test_bench_bc_parts_times_both_formulations(tmp_path: Path) -> None:
    # the script refuses to time two random shifts that give different pixels
    out = tmp_path / "parts.json"
    proc = _script("bench_bc_parts.py", "--reps", "2", "--batch", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    parts = json.loads(out.read_text())["median_ms"]
    assert len(parts) == 3  # the shift and the optimizer for both policies
    for arms in parts.values():
        assert len(arms) == 2 and all(ms > 0 for ms in arms.values())


def test_budget_split_pins_each_part_to_its_budget(reference_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    splits = ["", "encoder=0.25", "head=0.25", "encoder.layers.0=0.25,head=0.5"]
    args = ["--run", str(reference_run), "--episodes", "1", "--out", str(out)]
    proc = _script("budget_split.py", *args, *(a for s in splits for a in ("--split", s)))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["split"] for r in rows] == [
        {},
        {"encoder": 0.25},
        {"head": 0.25},
        {"encoder.layers.0": 0.25, "head": 0.5},
    ]
    full, enc, head, mixed = (r["macs_per_step"] for r in rows)
    # the encoder holds most MACs: pinning it cuts far more than pinning the head
    assert enc < head < full and mixed < full
    assert all(0.0 <= r["success_rate"] <= 1.0 and r["episodes"] == 1 for r in rows)
    bad = _script("budget_split.py", "--run", str(reference_run), "--split", "nope=0.5")
    assert bad.returncode != 0 and "no module 'nope'" in bad.stderr


def test_budget_split_open_holds_every_gate_of_the_module_open(
    reference_run: Path, tmp_path: Path
) -> None:
    from swan_policy.baselines import make_slimmable
    from swan_policy.cli import load_run_policy
    from swan_policy.config import load_config
    from swan_policy.envs import make_env

    out = tmp_path / "open.json"
    splits = ["encoder=0.25", "encoder=0.25,encoder.layers.0=open", "policy=open"]
    args = ["--run", str(reference_run), "--episodes", "1", "--out", str(out)]
    proc = _script("budget_split.py", *args, *(a for s in splits for a in ("--split", s)))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert rows[1]["split"] == {"encoder": 0.25, "encoder.layers.0": "open"}
    quarter, first_open, all_open = (r["macs_per_step"] for r in rows)
    assert first_open > quarter  # layer 0 runs all its channels, the rest a quarter
    # expected: every unit on (slimmable prefixes at budget 1 keep all), gate networks too
    policy = make_slimmable(load_run_policy(reference_run, "best").eval())
    env = make_env(load_config(reference_run / "config.yaml").env)
    obs, _ = env.reset(seed=0)
    env.close()
    policy.act(obs, 1.0)
    expected = sum(float(v.sum()) for v in policy.executed_macs().values())
    assert all_open == pytest.approx(expected) and all_open > policy.dense_macs()
    assert "policy=open" in proc.stdout


def test_gate_grad_path_is_zero_above_the_top_gate_and_not_below(
    reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "path.json"
    args = ["--run", str(reference_run), "--batches", "2", "--batch-size", "4"]
    proc = _script("gate_grad_path.py", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    share = {r["weight"]: r["gate_path_share"] for r in summary["rows"]}
    assert summary["budgets"][0] == 1.0 and len(summary["budgets"]) >= 2
    # tiny policy: two gated convs, a gated 8-unit head layer, the output layer. No gate
    # reads the output of the top gated layer or the output layer, so their weights get
    # no gradient through a gate; every layer under a gate does.
    assert share["head.layers.0.linear.weight"] == 0.0 and share["head.out.weight"] == 0.0
    below = [share[f"encoder.layers.{i}.conv.weight"] for i in (0, 1)]
    assert all(s > 1e-4 for s in below), share
    bad = _script("gate_grad_path.py", *args, "--budgets", "0.5", "1")
    assert bad.returncode != 0 and "must start with 1" in bad.stderr


def test_bench_gate_backward_runs_the_chosen_arms() -> None:
    proc = _script(
        "bench_gate_backward.py",
        "--reps",
        "1",
        "--batch",
        "4",
        "--arms",
        "ungated",
        "gated",
        "vecdot",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines[1:]] == ["ungated", "gated", "vecdot"]


def test_check_compiled_grads_compares_the_compiled_step_with_eager(tmp_path: Path) -> None:
    from tests.reliability._runs import CONFIG, set_args, tiny_policy

    out = tmp_path / "grads.json"
    args = ["--config", CONFIG, *set_args(tiny_policy()), "--batch", "4", "--batches", "1"]
    proc = _script("check_compiled_grads.py", *args, "--backend", "aot_eager", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["loss_eager"] > 0 and abs(row["loss_eager"] - row["loss_compiled"]) < 1e-5
    assert 0.0 <= row["max_rel_grad_diff"] < 1e-4
    assert "max relative gradient difference" in proc.stdout


def test_ladder_ranking_cuts_every_ranking_to_the_same_widths(
    reference_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ranking.json"
    args = ["--run", str(reference_run), "--checkpoint", "last", "--levels", "0.5", "0.25"]
    args += ["--rankings", "free", "own", "--episodes", "1", "--calib-episodes", "2"]
    args += ["--finetune", "0.5", "--work", str(tmp_path / "ft")]
    proc = _script("ladder_ranking.py", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    every = json.loads(out.read_text())["rows"]
    rows = [r for r in every if not r.get("finetuned")]
    assert [(r["level"], r["ranking"]) for r in rows] == [
        (0.5, "gated"),
        (0.25, "gated"),
        (0.5, "free"),
        (0.25, "free"),
        (0.5, "own"),
        (0.25, "own"),
    ]
    by = {(r["level"], r["ranking"]): r for r in rows}
    for b in (0.5, 0.25):
        free, own = by[(b, "free")], by[(b, "own")]
        assert free["rank_budgets"] == [1.0] and own["rank_budgets"] == [b]
        assert free["units"] == own["units"]  # the rankings differ, the widths do not
        assert free["macs_per_step"] == own["macs_per_step"] > 0
    assert by[(0.25, "free")]["macs_per_step"] < by[(0.5, "free")]["macs_per_step"]
    tuned = {(r["level"], r["ranking"]): r for r in every if r.get("finetuned")}
    assert set(tuned) == set(by) - {(0.5, "gated"), (0.25, "gated")}
    for key, row in tuned.items():  # the same cut, trained further: same MACs, own run
        assert row["macs_per_step"] == by[key]["macs_per_step"] and row["steps"] > 0
        assert (tmp_path / "ft" / f"{key[1]}_level_{key[0]:g}" / "finetune.json").is_file()


def test_budget_fit_reports_every_set_and_budget(reference_run: Path, tmp_path: Path) -> None:
    """Demos, then each DAgger round in numeric order (round_10 after round_2)."""
    import shutil

    from swan_policy.config import load_config
    from swan_policy.serialization import save_tensors
    from swan_policy.train.bc import load_bc_data

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)  # the reference run is BC only: add two rounds
    demos = load_bc_data(Path(load_config(run / "config.yaml").demos.path))
    (run / "dagger").mkdir()
    for r, n in ((2, 5), (10, 7)):
        part = demos.tensors()
        save_tensors(run / "dagger" / f"round_{r}.safetensors", {k: v[:n] for k, v in part.items()})
    out = tmp_path / "fit.json"
    args = ["--run", str(run), "--budgets", "0.25", "1", "--samples", "16"]
    proc = _script("budget_fit.py", *args, "--batch", "5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["set"] for r in rows] == ["demos", "round_2", "round_10"]
    assert [r["samples"] for r in rows[1:]] == [5, 7]
    for r in rows:
        assert set(r["bc_mse"]) == {"1", "0.25"} and r["drawn"] == min(16, r["samples"])
        assert all(v >= 0.0 for v in r["bc_mse"].values()) and r["distill_mse"] >= 0.0
    assert "b=0.25 / b=1" in proc.stdout


def test_bench_scheduler_times_every_arm_and_checks_the_cached_p99(tmp_path: Path) -> None:
    out = tmp_path / "sched.json"
    args = ("--blocks", "1", "--steps", "200", "--window", "20", "--pixels", "--out", str(out))
    proc = _script("bench_scheduler.py", *args)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert set(result["median_us_per_call"]) == {
        "fixed 0.5",
        "adaptive 0.4 (obs)",
        "adaptive 0.4 (obs), numpy mean",
        "deadline",
        "deadline, uncached np.percentile",
    }
    assert result["same_budgets_cached_uncached"] is True
    assert result["same_budgets_adaptive"] is True
    assert all(us > 0 for us in result["median_us_per_call"].values())

"""swan train / swan eval end to end on tiny settings (real envs, real CLI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from swan_policy.cli import main
from swan_policy.config import load_config
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import load_tensors
from swan_policy.train import bc, dagger, imitation
from swan_policy.train.checkpoint import latest_checkpoint
from tests.reliability._runs import TINY_DAGGER, set_args, tiny_policy

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "reach_bc.yaml")


def tiny(tmp: Path, *extra: str) -> list[str]:
    demos = [f"demos.path={tmp / 'demos.hdf5'}", "demos.episodes=3", "demos.workers=1"]
    return set_args([*tiny_policy(), *demos, *TINY_DAGGER, "eval.every=0", *extra])


def test_train_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--config", CONFIG, *tiny(tmp_path), "--run-dir", str(run)]) == 0
    assert (run / "config.yaml").is_file() and (run / "best" / "model.safetensors").is_file()
    assert latest_checkpoint(run) == run / "checkpoints" / "step_9"
    assert (run / "dagger" / "round_1.safetensors").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert kinds == {"start", "train", "dagger", "eval"}
    # the first record says what the run ran on (a same-seed rerun needs the same)
    start = records[0]
    assert start["kind"] == "start" and start["step"] == 0 and start["resumed"] is False
    assert start["torch_threads"] == torch.get_num_threads() and start["world_size"] == 1
    assert start["versions"]["torch"] == torch.__version__
    assert start["versions"]["swan-policy"] is not None
    train_recs = [r for r in records if r["kind"] == "train"]
    assert {"loss", "bc_loss", "active_fraction", "samples_per_s", "lr"} <= set(train_recs[0])
    # the resolved config holds the env's dims and rebuilds the same policy
    cfg = load_config(run / "config.yaml")
    assert cfg.policy.image_hw == (32, 32) and cfg.policy.proprio_dim == 6
    capsys.readouterr()
    out_json, video = tmp_path / "eval.json", tmp_path / "ep.mp4"
    args = ["eval", "--run", str(run), "--episodes", "2", "--budgets", "1,0.5", "--workers", "2"]
    assert main([*args, "--json", str(out_json), "--video", str(video)]) == 0
    result = json.loads(out_json.read_text())
    assert [r["budget"] for r in result["results"]] == [1.0, 0.5]
    assert all(0.0 <= r["success_rate"] <= 1.0 for r in result["results"])
    assert result["results"][1]["macs_per_step"] < result["results"][0]["macs_per_step"]
    assert video.stat().st_size > 0
    assert "success" in capsys.readouterr().out


def test_existing_run_dir_needs_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    assert main(["train", "--config", CONFIG, *tiny(tmp_path), "--run-dir", str(run)]) == 2
    assert "exists (pass --resume" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]
    assert not (tmp_path / "demos.hdf5").exists()  # no partial output
    empty = tmp_path / "empty"
    assert (
        main(["train", "--config", CONFIG, *tiny(tmp_path), "--run-dir", str(empty), "--resume"])
        == 2
    )
    assert "has no checkpoint to resume from" in capsys.readouterr().err


def _train(*args: str) -> None:
    assert main(["train", "--config", CONFIG, *args, "--quiet"]) == 0


def test_resume_equals_straight_run(tmp_path: Path) -> None:
    common = tiny(tmp_path, "method=bc", "eval.at_end=false", "log.checkpoint_every=4")
    common += ["--set", "bc.steps=8"]  # the cosine schedule's length is part of the config
    straight, split = tmp_path / "straight", tmp_path / "split"
    _train(*common, "--run-dir", str(straight))
    # the split run: roll back to its step-4 checkpoint, then resume to step 8
    _train(*common, "--run-dir", str(split))
    (split / "checkpoints" / "last").write_text("step_4\n")
    shutil.rmtree(split / "checkpoints" / "step_8")
    _train(*common, "--run-dir", str(split), "--resume")
    a = SwanPolicy.from_pretrained(straight / "checkpoints" / "step_8")
    b = SwanPolicy.from_pretrained(split / "checkpoints" / "step_8")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    # optimiser moments, step counts and the RNG stream match too
    opt_a = load_tensors(straight / "checkpoints" / "step_8" / "optimizer.safetensors")
    opt_b = load_tensors(split / "checkpoints" / "step_8" / "optimizer.safetensors")
    assert opt_a.keys() == opt_b.keys() and len(opt_a) > 10
    for k in opt_a:
        assert torch.equal(opt_a[k], opt_b[k]), k
    # every (re)start is recorded, with the step it started from
    recs = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    starts = [(r["step"], r["resumed"]) for r in recs if r["kind"] == "start"]
    assert starts == [(0, False), (4, True)]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = {"n": 0}
    real = bc.bc_sandwich_loss

    def flaky(*args: object, **kwargs: object) -> tuple[torch.Tensor, dict[str, object]]:
        calls["n"] += 1
        loss, info = real(*args, **kwargs)  # type: ignore[arg-type]  # passed through as is
        return (loss * float("nan") if calls["n"] == 5 else loss), info

    monkeypatch.setattr(bc, "bc_sandwich_loss", flaky)
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            CONFIG,
            *tiny(tmp_path, "method=bc"),
            "--run-dir",
            str(run),
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "loss is nan at step 4" in err and "step_3" in err
    assert latest_checkpoint(run) == run / "checkpoints" / "step_3"


def test_non_finite_gradient_stops_before_the_weights_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A finite loss with a NaN gradient (an overflow in backward) must not reach
    ``optimizer.step``: clipping would scale every gradient, and so every weight, to NaN."""
    from swan_policy.config import ExperimentConfig
    from tests.conftest import tiny_config

    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config())
    cfg = ExperimentConfig(policy=policy.config).model_copy(
        update={"bc": ExperimentConfig().bc.model_copy(update={"batch_size": 4, "sandwich": False})}
    )
    gen = torch.Generator().manual_seed(0)
    h, w = policy.config.image_hw
    data = bc.BCData(
        torch.randint(
            0, 256, (8, h, w, policy.config.image_channels), generator=gen, dtype=torch.uint8
        ),
        torch.randn(8, policy.config.proprio_dim, generator=gen),
        torch.rand(8, policy.config.action_dim, generator=gen) * 2 - 1,
    )
    loss_module = bc.SandwichLoss(policy, 0.0, 0.5)
    opt = bc.make_optimizer(policy, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, bc.lr_lambda(cfg, 10))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    monkeypatch.setattr(bc.nn.utils, "clip_grad_norm_", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(imitation.TrainingError, match="gradient norm is nan"):
        bc.bc_update(loss_module, opt, sched, data, cfg)
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_demos_of_another_env_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config whose env changed (here the visual variation) with ``demos.path`` kept
    must not train on the old env's demos; ``{}`` and the defaults name the same env."""
    run = tmp_path / "run"
    args = ["train", "--config", CONFIG, *tiny(tmp_path, "method=bc", "bc.steps=2")]
    assert main([*args, "--run-dir", str(run), "--quiet"]) == 0  # collects the demos
    capsys.readouterr()
    other = tmp_path / "other"
    varied = ["--set", "env.kwargs={width: 32, height: 32, variation: hard}"]
    assert main([*args, *varied, "--run-dir", str(other), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "demos.hdf5: collected on swan_envs/Reach-v0" in err and "'variation': 'hard'" in err
    assert not other.exists()  # nothing written
    same = ["--set", "env.kwargs={width: 32, height: 32, variation: none}"]  # the default
    assert main([*args, *same, "--run-dir", str(tmp_path / "same"), "--quiet"]) == 0


def test_ctrl_c_checkpoints_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    swan = Path(sys.executable).parent / "swan"
    args = [
        str(swan),
        "train",
        "--config",
        CONFIG,
        *tiny(tmp_path, "method=bc", "bc.steps=100000", "log.checkpoint_every=100000"),
        "--run-dir",
        str(run),
        "--quiet",
    ]
    proc = subprocess.Popen(
        args, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"  # its first line is the start record: wait for a step
    while time.monotonic() < deadline and not (
        metrics.exists() and '"kind": "train"' in metrics.read_text()
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ckpt = latest_checkpoint(run)
    assert ckpt is not None and (ckpt / "trainer_state.json").is_file()
    step = int(ckpt.name.split("_")[1])
    assert step >= 2
    code = main(
        [
            "train",
            "--config",
            CONFIG,
            *tiny(tmp_path, "method=bc", f"bc.steps={step + 2}", "eval.at_end=false"),
            "--run-dir",
            str(run),
            "--resume",
            "--quiet",
        ]
    )
    assert code == 0
    assert latest_checkpoint(run) == run / "checkpoints" / f"step_{step + 2}"


def test_cli_subprocess_demos_train_resume_eval(tmp_path: Path) -> None:
    swan = str(Path(sys.executable).parent / "swan")
    demos = tmp_path / "demos.hdf5"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [swan, *args], capture_output=True, text=True, timeout=300, check=False
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    run(
        "demos",
        "--task",
        "swan_envs/Reach-v0",
        "--episodes",
        "3",
        "--workers",
        "1",
        "--out",
        str(demos),
        "--env-kwarg",
        "width=32",
        "--env-kwarg",
        "height=32",
    )
    common = tiny(tmp_path, "method=bc", "eval.at_end=false")
    out = tmp_path / "run"
    run("train", "--config", CONFIG, *common, "--run-dir", str(out), "--quiet")
    assert latest_checkpoint(out) == out / "checkpoints" / "step_6"
    run(
        "train",
        "--config",
        CONFIG,
        *common,
        "--set",
        "bc.steps=8",
        "--run-dir",
        str(out),
        "--resume",
        "--quiet",
    )
    assert latest_checkpoint(out) == out / "checkpoints" / "step_8"
    proc = run(
        "eval",
        "--run",
        str(out),
        "--checkpoint",
        "last",
        "--episodes",
        "1",
        "--budgets",
        "0.5",
        "--workers",
        "1",
    )
    assert "0.5" in proc.stdout


def test_same_seed_same_losses_different_seed_differs(tmp_path: Path) -> None:
    def losses(name: str, seed: int) -> list[float]:
        run = tmp_path / name
        args = tiny(tmp_path, "method=bc", "eval.at_end=false", f"seed={seed}", "log.log_every=1")
        assert main(["train", "--config", CONFIG, *args, "--run-dir", str(run), "--quiet"]) == 0
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if r["kind"] == "train"]

    a, b, c = losses("a", 0), losses("b", 0), losses("c", 1)
    assert a == b and len(a) == 6
    assert a != c


def test_eval_on_env_with_other_spaces_fails_before_first_step(tmp_path: Path) -> None:
    from swan_policy.config import EnvConfig
    from swan_policy.envs import SpaceMismatchError
    from swan_policy.evaluate import evaluate_policy
    from tests.conftest import tiny_config

    policy = SwanPolicy(tiny_config(image_hw=(32, 32), proprio_dim=6))
    env = EnvConfig(id="swan_envs/Reach-v0", kwargs={"width": 64, "height": 64})
    with pytest.raises(
        SpaceMismatchError,
        match=r"'pixels': policy expects \(32, 32, 3\), "
        r"env swan_envs/Reach-v0 gives \(64, 64, 3\)",
    ):
        evaluate_policy(policy, env, 1, [1.0])
    env2 = EnvConfig(id="swan_envs/Push-v0", kwargs={"width": 32, "height": 32})
    with pytest.raises(SpaceMismatchError, match=r"'proprio': policy expects \(6,\)"):
        evaluate_policy(policy, env2, 1, [1.0])


def test_dagger_round_splits_episodes_across_rollout_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dagger.budget: [1.0, 0.25]``: each round's episodes are played at both budgets."""
    from swan_policy.config import load_config
    from tests.conftest import tiny_config

    sets = tiny(tmp_path, "dagger.budget=[1.0, 0.25]", "dagger.episodes_per_round=3")
    cfg = load_config(CONFIG, [v for i, v in enumerate(sets) if i % 2])
    policy = SwanPolicy(tiny_config(image_hw=(32, 32), proprio_dim=6))
    calls: list[tuple[int, int, float]] = []
    real = dagger.run_episodes

    def spy(
        policy: SwanPolicy, vec: Any, episodes: int, seed: int, budget: float, **kw: Any
    ) -> Any:
        calls.append((episodes, seed, budget))
        return real(policy, vec, episodes, seed, budget, **kw)

    monkeypatch.setattr(dagger, "run_episodes", spy)
    data, _ = dagger.dagger_round(policy, cfg, 1)
    (n0, seed0, b0), (n1, seed1, b1) = calls
    assert (n0, b0, n1, b1) == (2, 1.0, 1, 0.25)
    assert seed1 == seed0 + 2  # disjoint episodes
    assert len(data.actions) > 0


def test_bc_batches_take_the_colour_mix_when_configured() -> None:
    """``bc.colour_mix`` recolours the sampled images; indices, proprio and actions stay."""
    gen = torch.Generator().manual_seed(0)
    data = bc.BCData(
        torch.randint(0, 256, (32, 8, 8, 3), generator=gen, dtype=torch.uint8),
        torch.randn(32, 4, generator=gen),
        torch.randn(32, 2, generator=gen),
    )
    torch.manual_seed(3)
    plain_obs, plain_act = data.sample(8, 0)
    torch.manual_seed(3)
    mixed_obs, mixed_act = data.sample(8, 0, colour_mix=0.3)
    assert torch.equal(plain_act, mixed_act)
    assert torch.equal(plain_obs["proprio"], mixed_obs["proprio"])
    assert not torch.equal(plain_obs["pixels"], mixed_obs["pixels"])
    cfg = load_config(
        Path(__file__).parents[2] / "configs/pickplace_bc.yaml", ["bc.colour_mix=0.3"]
    )
    assert cfg.bc.colour_mix == 0.3


def test_resuming_a_run_from_an_init_policy_keeps_what_it_froze(
    demos16: Path, tmp_path: Path
) -> None:
    """A slimmable baseline (frozen gates) cut after a checkpoint and resumed: its gates
    stay the init policy's prefixes, the rest trains on."""
    from swan_policy.baselines import make_slimmable
    from swan_policy.envs import make_env, resolve_policy_config
    from tests.reliability._runs import CONFIG, tiny_train

    cfg = load_config(CONFIG, tiny_train(demos16)[4::2])  # the --set values
    resolved = resolve_policy_config(cfg.policy, make_env(cfg.env))

    def slimmable() -> SwanPolicy:
        torch.manual_seed(0)
        return make_slimmable(SwanPolicy(resolved))

    run = tmp_path / "run"
    imitation.train(cfg, run, show=False, init_policy=slimmable())
    shutil.rmtree(run / "checkpoints" / "step_6")  # cut after the step-4 checkpoint
    (run / "checkpoints" / "last").write_text("step_4\n")
    imitation.train(cfg, run, resume=True, show=False, init_policy=slimmable())
    last = latest_checkpoint(run)
    assert last is not None and last.name == "step_6"
    final, init = SwanPolicy.from_pretrained(last), slimmable()
    frozen = {n for n, p in init.named_parameters() if not p.requires_grad}
    assert frozen
    for (name, p), q in zip(final.named_parameters(), init.parameters(), strict=True):
        assert torch.equal(p, q) == (name in frozen), name


def test_a_gated_init_policy_trains_with_the_runs_sparsity_weight(
    demos16: Path, tmp_path: Path
) -> None:
    """A fine-tune's ``policy.gate.sparsity_weight`` applies to the policy it starts from
    (its architecture is kept; the loss weight is the run's), and the run records it."""
    from swan_policy.envs import make_env, resolve_policy_config
    from tests.reliability._runs import CONFIG, tiny_train

    cfg = load_config(CONFIG, [*tiny_train(demos16)[4::2], "policy.gate.sparsity_weight=0.3"])
    resolved = resolve_policy_config(cfg.policy, make_env(cfg.env))
    init_cfg = resolved.model_copy(
        update={"gate": resolved.gate.model_copy(update={"sparsity_weight": 0.0})}
    )
    run = tmp_path / "run"
    imitation.train(cfg, run, show=False, init_policy=SwanPolicy(init_cfg))
    last = latest_checkpoint(run)
    assert last is not None
    assert SwanPolicy.from_pretrained(last).config.gate.sparsity_weight == 0.3
    assert load_config(run / "config.yaml").policy.gate.sparsity_weight == 0.3

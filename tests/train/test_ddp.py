"""Multi-process behaviour cloning with torchrun (DDP, gloo on CPU), 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from swan_policy.policy import SwanPolicy
from swan_policy.train.checkpoint import latest_checkpoint
from tests.train.test_imitation import CONFIG, tiny


def _torchrun(tmp_path: Path, run: Path, *extra: str) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "swan_policy.cli",
        "train", "--config", CONFIG,
        *tiny(tmp_path, "method=bc", "eval.at_end=false", "bc.steps=4", "log.log_every=1"),
        "--run-dir", str(run), "--quiet", *extra,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torchrun_two_processes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _torchrun(tmp_path, run)
    assert latest_checkpoint(run) == run / "checkpoints" / "step_4"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    from swan_policy.train.bc import SandwichLoss
    from tests.conftest import random_obs, tiny_config

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config(gate={"init_bias": 0.5, "sparsity_weight": 0.1}))
    model = torch.nn.parallel.DistributedDataParallel(SandwichLoss(policy, 0.1, 0.5))
    obs = random_obs(policy.config, 8, seed=3)
    actions = torch.linspace(-1, 1, 16).reshape(8, 2)
    half = slice(4 * rank, 4 * rank + 4)
    loss, _ = model({k: v[half] for k, v in obs.items()}, actions[half], [1.0, 0.25])
    loss.backward()
    grads = {k: p.grad for k, p in policy.named_parameters() if p.grad is not None}
    torch.save(grads, Path(out_dir) / f"grads{rank}.pt")
    dist.destroy_process_group()


def test_ddp_gradients_match_single_process(tmp_path: Path) -> None:
    import torch
    import torch.multiprocessing as mp

    from swan_policy.train.bc import SandwichLoss
    from tests.conftest import random_obs, tiny_config

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config(gate={"init_bias": 0.5, "sparsity_weight": 0.1}))
    obs = random_obs(policy.config, 8, seed=3)
    loss, _ = SandwichLoss(policy, 0.1, 0.5)(
        obs, torch.linspace(-1, 1, 16).reshape(8, 2), [1.0, 0.25]
    )
    loss.backward()
    for rank in (0, 1):
        # our own file from this test run, never a received one
        ddp = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        for name, p in policy.named_parameters():
            assert p.grad is not None
            torch.testing.assert_close(ddp[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_torchrun_resume_equals_straight_run(tmp_path: Path) -> None:
    """Each rank resumes its own random streams (batches, shifts, budgets): rank 1 must
    not continue from rank 0's copy, or both ranks draw the same batches from then on."""
    import torch

    from swan_policy.serialization import load_json, load_tensors

    straight, split = tmp_path / "straight", tmp_path / "split"
    _torchrun(tmp_path, straight, "--set", "log.checkpoint_every=2")
    shutil.copytree(straight, split)
    (split / "checkpoints" / "last").write_text("step_2\n")
    shutil.rmtree(split / "checkpoints" / "step_4")
    assert "rank1" in load_json(split / "checkpoints" / "step_2" / "trainer_state.json")["rng"]
    _torchrun(tmp_path, split, "--set", "log.checkpoint_every=2", "--resume")
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_tensors(straight / "checkpoints" / "step_4" / name)
        b = load_tensors(split / "checkpoints" / "step_4" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from swan_policy.policy import SwanPolicy
from swan_policy.serialization import CheckpointError
from swan_policy.train.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from tests.conftest import random_obs, tiny_config


def _trained(steps: int = 3) -> tuple[SwanPolicy, torch.optim.Optimizer]:
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config())
    opt = torch.optim.AdamW(policy.parameters(), 1e-3)
    obs = random_obs(policy.config, 4)
    for _ in range(steps):
        loss, _ = policy.loss({"obs": obs, "actions": torch.zeros(4, 2)})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy, opt


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_round_trip_restores_weights_optimizer_and_rng(tmp_path: Path) -> None:
    policy, opt = _trained()
    sched = torch.optim.lr_scheduler.StepLR(opt, 2)
    sched.step()
    save_checkpoint(tmp_path, policy, opt, TrainerState(step=3, best_metric=0.5), sched)
    expected = (torch.rand(4), np.random.rand(), random.random())
    last = latest_checkpoint(tmp_path)
    assert last is not None
    ck = load_checkpoint(last)
    ck.restore_rng()
    assert torch.equal(torch.rand(4), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]
    assert ck.state.step == 3 and ck.state.best_metric == 0.5
    for a, b in zip(policy.state_dict().values(), ck.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(ck.policy.parameters(), 1e-3)
    assert ck.optimizer_state is not None
    opt2.load_state_dict(ck.optimizer_state)
    st1, st2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert st1.keys() == st2.keys()
    for pid in st1:
        assert all(torch.equal(st1[pid][k], st2[pid][k]) for k in st1[pid]), pid
    assert ck.scheduler_state == sched.state_dict()


def test_last_moves_only_to_complete_checkpoints(tmp_path: Path) -> None:
    policy, opt = _trained(1)
    save_checkpoint(tmp_path, policy, opt, TrainerState(step=1))
    # a crash half-way through the next save leaves a temp dir and no pointer move
    tmp = tmp_path / "checkpoints" / ".tmp-step_2-999"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"partial")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_1"
    load_checkpoint(tmp_path / "checkpoints" / "step_1")
    assert not tmp.exists()  # cleaned by the next load
    save_checkpoint(tmp_path, policy, opt, TrainerState(step=2))
    assert (tmp_path / "checkpoints" / "last").read_text().strip() == "step_2"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last",
        "step_1",
        "step_2",
    ]


def test_corrupt_trainer_state_is_a_clear_error(tmp_path: Path) -> None:
    policy, opt = _trained(1)
    ckpt = save_checkpoint(tmp_path, policy, opt, TrainerState(step=1))
    (ckpt / "trainer_state.json").write_text('{"step": 1}')
    with pytest.raises(CheckpointError, match="trainer state does not fit"):
        load_checkpoint(ckpt)
    (ckpt / "optimizer.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors: not a valid safetensors"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("fail_at", [0, 1, 2, 3])
def test_resave_of_the_same_step_keeps_last_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    """The end of a run re-saves the step of its last periodic checkpoint: a kill at any
    file of that re-save leaves ``last`` on a complete, loadable step_<n>."""
    import swan_policy.train.checkpoint as checkpoint

    policy, opt = _trained(1)
    save_checkpoint(tmp_path, policy, opt, TrainerState(step=4))
    save_checkpoint(tmp_path, policy, opt, TrainerState(step=8))
    final = tmp_path / "checkpoints" / "step_8"
    real_replace, calls = checkpoint.os.replace, []

    def dying_replace(src: str | Path, dst: str | Path) -> None:
        if Path(str(dst)) == final or Path(str(dst)).parent == final:  # moves into step_8
            calls.append(dst)
            if len(calls) > fail_at:
                raise KeyboardInterrupt("killed")  # stands in for SIGKILL mid-save
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, policy, opt, TrainerState(step=8, best_metric=0.9))
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    assert calls  # the kill did land inside the re-save
    last = latest_checkpoint(tmp_path)
    assert last == final
    ck = load_checkpoint(last)
    assert ck.state.step == 8
    for a, b in zip(policy.state_dict().values(), ck.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # a complete re-save then lands, with its new trainer state
    save_checkpoint(tmp_path, policy, opt, TrainerState(step=8, best_metric=0.9))
    assert load_checkpoint(tmp_path / "checkpoints" / "step_8").state.best_metric == 0.9
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))

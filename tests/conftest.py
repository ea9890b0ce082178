"""Shared fixtures: tiny policies and observations so the suite stays fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

from swan_policy.config import PolicyConfig
from tests.reliability._runs import tiny_train

os.environ.setdefault("MUJOCO_GL", "egl")
settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60)
settings.load_profile("ci")
torch.set_num_threads(1)


def tiny_config(**overrides: object) -> PolicyConfig:
    data: dict[str, object] = {
        "image_hw": (16, 16),
        "image_channels": 3,
        "proprio_dim": 5,
        "action_dim": 2,
        "encoder": {"channels": [8, 8], "strides": [2, 1], "kernel_size": 3},
        "head": {"hidden": [16, 16], "proprio_hidden": 8},
        "gate": {"init_bias": 0.0},
    }
    data.update(overrides)
    return PolicyConfig.model_validate(data)


def random_obs(cfg: PolicyConfig, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = {}
    if cfg.image_hw is not None and cfg.image_channels is not None:
        obs["pixels"] = torch.randint(
            0, 256, (batch, *cfg.image_hw, cfg.image_channels), generator=g, dtype=torch.uint8
        )
    assert cfg.proprio_dim is not None  # tiny_config()/state_config() set it
    obs["proprio"] = torch.randn(batch, cfg.proprio_dim, generator=g)
    return obs


def state_config(**overrides: object) -> PolicyConfig:
    """A tiny proprio-only policy (no pixel encoder), as RL on state observations uses."""
    data: dict[str, object] = {
        "pixels": False,
        "proprio_dim": 4,
        "action_dim": 1,
        "head": {"hidden": [16, 16], "proprio_hidden": 0},
        "gate": {"init_bias": 0.0},
    }
    data.update(overrides)
    return PolicyConfig.model_validate(data)


@pytest.fixture
def cfg() -> PolicyConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def demos16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three scripted Reach-v0 episodes at 16x16 (collected in this process)."""
    from swan_policy.data.demos import collect_demos

    path = tmp_path_factory.mktemp("demos") / "reach16.hdf5"
    collect_demos(
        "swan_envs/Reach-v0",
        3,
        path,
        workers=1,
        seed=0,
        env_kwargs={"width": 16, "height": 16},
        progress=False,
    )
    return path


@pytest.fixture(scope="session")
def reference_run(demos16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_train(demos16)`` run to the end, never interrupted. Read-only: copy it."""
    from swan_policy.cli import main
    from swan_policy.train.checkpoint import latest_checkpoint

    run = tmp_path_factory.mktemp("reference") / "run"
    assert main([*tiny_train(demos16), "--run-dir", str(run), "--quiet"]) == 0
    assert latest_checkpoint(run) == run / "checkpoints" / "step_6"
    return run

"""Shared fixtures: tiny policies and observations so the suite stays fast."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from swan_policy.config import PolicyConfig

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

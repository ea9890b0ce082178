"""A tiny bundle shaped like swan_envs/Reach-v0 (64x64x3 pixels, 6 proprio, 2 actions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from swan_policy.budget.ladder import calibrate_ladder
from swan_policy.export.onnx import export_bundle
from swan_policy.policy import SwanPolicy
from tests.conftest import random_obs, tiny_config

LEVELS = (1.0, 0.5)


def reach_config():
    return tiny_config(
        image_hw=(64, 64),
        proprio_dim=6,
        encoder={"channels": [4, 4], "strides": [2, 2], "kernel_size": 3},
        head={"hidden": [16], "proprio_hidden": 8},
    )


@pytest.fixture(scope="session")
def reach_bundle(tmp_path_factory) -> tuple[Path, SwanPolicy, object]:
    """``(bundle dir, policy, ladder)``; treat the directory as read-only (copy to edit)."""
    torch.manual_seed(0)
    policy = SwanPolicy(reach_config()).eval()
    obs = {k: v.numpy() for k, v in random_obs(policy.config, 32, seed=1).items()}
    ladder = calibrate_ladder(policy, obs, LEVELS)
    out = tmp_path_factory.mktemp("deploy") / "reach"
    export_bundle(policy, ladder, out, real_obs=obs, gates="folded")
    return out, policy, ladder


def one_obs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "pixels": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "proprio": rng.standard_normal(6).astype(np.float32),
    }

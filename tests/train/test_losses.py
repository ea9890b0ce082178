from __future__ import annotations

import pytest
import torch

from swan_policy.policy import SwanPolicy
from swan_policy.train.losses import bc_sandwich_loss, sandwich_budgets
from tests.conftest import random_obs, tiny_config


def test_sandwich_budgets() -> None:
    gen = torch.Generator().manual_seed(0)
    b = sandwich_budgets(0.25, 2, gen)
    assert b[:2] == [1.0, 0.25] and len(b) == 4 and all(0.25 <= x <= 1.0 for x in b)
    assert b == sandwich_budgets(0.25, 2, torch.Generator().manual_seed(0))
    assert sandwich_budgets(1.0, 3, gen) == [1.0]
    assert set(sandwich_budgets(0.25, 5, gen, levels=[0.5, 0.75])[2:]) <= {0.5, 0.75}
    with pytest.raises(ValueError, match="b_min must be in"):
        sandwich_budgets(0.0, 1, gen)


def test_sandwich_loss_trains_all_budgets() -> None:
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config())
    obs = random_obs(policy.config, 8)
    loss, info = bc_sandwich_loss(policy, obs, torch.zeros(8, 2), [1.0, 0.25, 0.5], 0.1, 0.5)
    loss.backward()
    assert {"bc_loss", "bc_loss@min", "sparsity", "active_fraction", "loss"} <= set(info)
    assert all(p.grad is not None for p in policy.head.out.parameters())
    first = policy.encoder.convs[0]
    assert first.gate_fc is not None and first.gate_fc.weight.grad is not None


def test_low_weight_scales_only_the_lower_budget_passes() -> None:
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config()).eval()  # eval: same gates on every call
    obs = random_obs(policy.config, 8)
    acts = torch.rand(8, 2)
    args = (policy, obs, acts, [1.0, 0.25, 0.5], 0.1, 0.5)
    full, _ = bc_sandwich_loss(*args)
    half, _ = bc_sandwich_loss(*args, low_weight=0.5)
    top, _ = bc_sandwich_loss(*args, low_weight=0.0)  # the b = 1 pass alone
    torch.testing.assert_close(half - top, 0.5 * (full - top))
    assert float(full - top) > 0

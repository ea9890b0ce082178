from __future__ import annotations

import pytest
import torch

from swan_policy.nn import flops
from swan_policy.nn.encoders import preprocess_pixels
from swan_policy.policy import SwanPolicy
from tests.conftest import random_obs, tiny_config


def test_primitive_formulas_match_flop_counter() -> None:
    conv = torch.nn.Conv2d(5, 7, 3, stride=2)
    x = torch.rand(1, 5, 17, 13)
    out_hw = tuple(conv(x).shape[2:])
    assert flops.count_flops(conv, x) == 2 * flops.conv2d_macs(5, 7, (3, 3), out_hw)
    lin = torch.nn.Linear(11, 6)
    assert flops.count_flops(lin, torch.rand(1, 11)) == 2 * flops.linear_macs(11, 6)


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_policy_macs_match_flop_counter(batch: int) -> None:
    cfg = tiny_config(gate={"enabled": False})
    policy = SwanPolicy(cfg).eval()
    obs = random_obs(cfg, batch)
    counted = flops.count_flops(policy, obs)
    executed = policy.executed_macs()
    per_sample = sum(float(v[0]) for v in executed.values())
    assert counted == 2 * batch * policy.dense_macs()
    assert per_sample == policy.dense_macs()


def test_gated_policy_counts_gates_and_only_active_units() -> None:
    cfg = tiny_config(gate={"init_bias": 100.0})  # every gate open
    policy = SwanPolicy(cfg).eval()
    obs = random_obs(cfg, 1)
    counted = flops.count_flops(policy, obs)
    per_sample = sum(float(v[0]) for v in policy.executed_macs().values())
    # FlopCounterMode sees the gates' linear maps but not the global average pools,
    # which we count as one add per pooled input element.
    pools = 0
    x = preprocess_pixels(obs["pixels"])
    for layer in policy.encoder.layers:
        pools += x[0].numel()
        x, _ = layer(x)
    assert per_sample == counted / 2 + pools
    # at budget 0.25 the executed count follows the active units exactly
    with torch.no_grad():
        policy(obs, 0.25)
    macs = policy.executed_macs()
    l1 = policy.encoder.layers[1]
    n0, n1 = 2, 2  # ceil(0.25 * 8) units in each conv layer
    assert float(macs["encoder.layers.1"][0]) == l1.macs(n0, n1)
    assert per_sample > 3 * sum(float(v[0]) for v in macs.values())

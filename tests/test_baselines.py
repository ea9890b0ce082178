"""Static baselines of the trade-off benchmark (issue 8): matched widths, L1 pruning, slimmable."""

from __future__ import annotations

import pytest
import torch

from swan_policy.baselines import (
    dense_config,
    l1_prune,
    l1_scores,
    layer_names,
    layer_widths,
    make_slimmable,
    matched_prefix_budget,
    prefix_macs,
)
from swan_policy.budget.ladder import calibrate_ladder, graph_macs, level_policy
from swan_policy.nn.layers import GatedConv2d
from swan_policy.policy import SwanPolicy
from tests.conftest import random_obs, tiny_config

LEVELS = (1.0, 0.5, 0.25)


def _dense(seed: int = 0) -> SwanPolicy:
    torch.manual_seed(seed)
    return SwanPolicy(tiny_config(gate={"enabled": False})).eval()


def test_dense_config_has_the_level_widths_and_its_macs() -> None:
    torch.manual_seed(0)
    swan = SwanPolicy(tiny_config(gate={"init_bias": 1.0})).eval()
    ladder = calibrate_ladder(swan, random_obs(swan.config, 32), LEVELS)
    for b in (0.5, 0.25):
        units = ladder.units(b)
        small = SwanPolicy(dense_config(swan.config, units))
        assert not small.gates()
        assert {k: m.num_units for k, m in small.gated_layers().items()} == units
        # the same layer shapes as the level's folded model: the same MACs
        assert small.dense_macs() == graph_macs(level_policy(swan, ladder, b, "folded"))
    with pytest.raises(ValueError, match="must name the layers"):
        dense_config(swan.config, {"head.layers.0": 4})
    assert layer_names(swan.config) == list(swan.gated_layers())


def test_l1_prune_keeps_the_largest_units_and_is_a_sub_network() -> None:
    dense = _dense()
    layers = dense.gated_layers()
    with torch.no_grad():  # make two units of each layer clearly the largest
        for layer in layers.values():
            w = layer.conv.weight if isinstance(layer, GatedConv2d) else layer.linear.weight
            w.mul_(0.01)
            w[[1, 3]] *= 1000.0
    scores = l1_scores(dense)
    units = {k: 2 for k in layers}
    pruned = l1_prune(dense, units)
    assert {k: m.num_units for k, m in pruned.gated_layers().items()} == units
    for s in scores.values():
        assert set(torch.topk(s, 2).indices.tolist()) == {1, 3}
    # keeping every unit changes nothing
    obs = random_obs(dense.config, 4)
    same = l1_prune(dense, {k: m.num_units for k, m in layers.items()})
    torch.testing.assert_close(same(obs), dense(obs))
    # pruned == the dense net with the other units' outputs zeroed (ReLU units: exact)
    with torch.no_grad():
        zeroed = l1_prune(dense, {k: m.num_units for k, m in layers.items()})
        for layer in zeroed.gated_layers().values():
            mod = layer.conv if isinstance(layer, GatedConv2d) else layer.linear
            drop = [i for i in range(layer.num_units) if i not in (1, 3)]
            mod.weight[drop] = 0.0
            assert mod.bias is not None
            mod.bias[drop] = -1.0  # ReLU(-1) = 0: the unit is off
    torch.testing.assert_close(pruned(obs), zeroed(obs))
    with pytest.raises(ValueError, match="cannot keep"):
        l1_prune(dense, {"head.layers.0": 0})
    with pytest.raises(ValueError, match="unknown layer"):
        l1_prune(dense, {"nope": 1})


def test_slimmable_gates_are_input_independent_prefixes_and_stay_frozen() -> None:
    torch.manual_seed(0)
    policy = make_slimmable(SwanPolicy(tiny_config()))
    frozen = [n for n, p in policy.named_parameters() if not p.requires_grad]
    assert frozen and all(".gate" in n for n in frozen)
    obs = random_obs(policy.config, 6, seed=3)
    for b in LEVELS:
        policy(obs, b, mode="masked")
        for name, g in policy.last_gates().items():
            assert g is not None
            n = g.shape[1]
            k = -(-int(b * n * 1000) // 1000)  # ceil(b * n) for these exact products
            expected = torch.zeros(n)
            expected[:k] = 1.0
            assert torch.equal(g, expected.expand_as(g)), (name, b)
    # a training step moves the network but not the gates
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    loss, _ = policy.loss({"obs": obs, "actions": torch.rand(6, 2)}, 0.5)
    loss.backward()
    opt.step()
    for n, p in policy.named_parameters():
        # AdamW's weight decay moves every trainable tensor, even units the budget cut
        assert (not torch.equal(p, before[n])) == p.requires_grad, n
    # its ladder is the prefix order
    ladder = calibrate_ladder(policy.eval(), obs, LEVELS)
    for name, order in ladder.ranking.items():
        assert order == sorted(order), name
    with pytest.raises(ValueError, match="gated policy"):
        make_slimmable(_dense())


def test_matched_prefix_budget_finds_the_nearest_prefix_above_lo() -> None:
    cfg = tiny_config()
    widths = layer_widths(cfg)
    assert list(widths) == layer_names(cfg)
    # a prefix's own MACs give back its budget (the smallest budget with those units)
    for b in (0.25, 0.5, 0.75, 1.0):
        found = matched_prefix_budget(cfg, prefix_macs(cfg, b))
        assert prefix_macs(cfg, found) == prefix_macs(cfg, b)
        assert found <= b
    # a target between two prefixes: the nearer one, and it is the nearest of all
    budgets = sorted({i / n for n in widths.values() for i in range(1, n + 1)})
    macs = [prefix_macs(cfg, b) for b in budgets]
    for a, b in zip(macs, macs[1:], strict=False):
        for target in (0.3 * a + 0.7 * b, 0.7 * a + 0.3 * b):
            got = prefix_macs(cfg, matched_prefix_budget(cfg, target))
            assert abs(got - target) == min(abs(m - target) for m in macs), (a, b, target)
    # beyond either end: the end; under lo: the prefix at lo
    assert matched_prefix_budget(cfg, 10 * macs[-1]) == 1.0
    assert matched_prefix_budget(cfg, 0) == budgets[0]
    assert prefix_macs(cfg, matched_prefix_budget(cfg, 0, lo=0.5)) == prefix_macs(cfg, 0.5)
    with pytest.raises(ValueError, match="lo must be"):
        matched_prefix_budget(cfg, 1.0, lo=1.5)

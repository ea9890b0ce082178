"""Budget ladder: ranking, nesting, level sizes, JSON round trip, level models."""

from __future__ import annotations

import math

import pytest
import torch

from swan_policy.budget.ladder import (
    Ladder,
    calibrate_ladder,
    fold_all_gates,
    graph_macs,
    level_policy,
)
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import CheckpointError
from tests.conftest import random_obs, state_config, tiny_config

LEVELS = (1.0, 0.75, 0.5, 0.25)


def _policy(cfg=None, seed: int = 0) -> SwanPolicy:
    torch.manual_seed(seed)
    return SwanPolicy(cfg or tiny_config()).eval()


@pytest.fixture(scope="module")
def ladder_and_policy() -> tuple[Ladder, SwanPolicy]:
    policy = _policy()
    obs = random_obs(policy.config, 64, seed=1)
    return calibrate_ladder(policy, obs, LEVELS), policy


def test_levels_nest_and_have_the_documented_sizes(ladder_and_policy) -> None:
    ladder, policy = ladder_and_policy
    keeps = {b: ladder.keep(b) for b in LEVELS}
    for name, layer in policy.gated_layers().items():
        assert layer.gate is not None
        ref = layer.gate.num_ref_units
        for hi, lo in zip(LEVELS, LEVELS[1:], strict=False):
            assert set(keeps[lo][name]) <= set(keeps[hi][name]), (name, hi, lo)
        for b in LEVELS:
            expected = max(1, min(math.ceil(b * ref), ladder.active[name]))
            assert len(keeps[b][name]) == expected
            assert keeps[b][name] == sorted(ladder.ranking[name][:expected])


def test_ranking_follows_frequency_then_mean_logit(ladder_and_policy) -> None:
    ladder, _ = ladder_and_policy
    for name, order in ladder.ranking.items():
        score, logit = ladder.score[name], ladder.mean_logit[name]
        keys = [(-score[i], -logit[i], i) for i in order]
        assert keys == sorted(keys), name
        assert sorted(order) == list(range(len(order)))


def test_never_active_units_are_dropped_at_every_level() -> None:
    policy = _policy()
    # switch unit 3 of the first head layer off for every input
    gate = policy.head.hidden[0].gate_up
    assert gate is not None
    with torch.no_grad():
        gate.bias[3] = -1e4
    ladder = calibrate_ladder(policy, random_obs(policy.config, 32, seed=2), LEVELS)
    assert ladder.frequency["head.layers.0"][3] == 0.0
    assert ladder.active["head.layers.0"] <= 15
    for b in LEVELS:
        assert 3 not in ladder.keep(b)["head.layers.0"]


def test_json_round_trip(tmp_path, ladder_and_policy) -> None:
    ladder, _ = ladder_and_policy
    path = ladder.save(tmp_path / "ladder.json")
    again = Ladder.load(path)
    assert again.to_json() == ladder.to_json()
    for b in LEVELS:
        assert again.keep(b) == ladder.keep(b)


def test_bad_ladder_files_give_typed_errors(tmp_path, ladder_and_policy) -> None:
    ladder, _ = ladder_and_policy
    with pytest.raises(CheckpointError, match="no ladder file"):
        Ladder.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a JSON ladder"):
        Ladder.load(bad)
    data = ladder.to_json()
    data["ranking"] = {k: [0] * len(v) for k, v in data["ranking"].items()}
    with pytest.raises(ValueError, match="not a permutation"):
        Ladder.from_json(data)
    with pytest.raises(ValueError, match="format"):
        Ladder.from_json({"format": "other"})


def test_level_model_is_the_compacted_policy(ladder_and_policy) -> None:
    ladder, policy = ladder_and_policy
    obs = random_obs(policy.config, 8, seed=3)
    with torch.no_grad():
        full = policy(obs, 1.0, mode="masked")
        top = level_policy(policy, ladder, 1.0, gates="kept")
        # level 1.0 keeps every unit that was ever active: same actions as the policy
        if all(ladder.active[k] == len(v) for k, v in ladder.ranking.items()):
            torch.testing.assert_close(top(obs, 1.0), full, atol=1e-5, rtol=0)
        for b in LEVELS:
            kept = level_policy(policy, ladder, b, gates="kept")
            folded = level_policy(policy, ladder, b, gates="folded")
            units = ladder.units(b)
            for name, layer in kept.gated_layers().items():
                assert layer.num_units == units[name]
            assert not folded.gates()
            assert folded(obs, 1.0).shape == full.shape
            assert graph_macs(kept) > graph_macs(folded) == folded.dense_macs()


def test_fold_all_gates_is_exact_when_every_gate_is_open() -> None:
    policy = _policy(tiny_config(gate={"init_bias": 1e4}))  # gates always open
    obs = random_obs(policy.config, 4)
    with torch.no_grad():
        torch.testing.assert_close(fold_all_gates(policy)(obs), policy(obs), atol=1e-5, rtol=0)


def test_proprio_only_policy_and_mismatched_ladder(ladder_and_policy) -> None:
    ladder, _ = ladder_and_policy
    policy = _policy(state_config())
    state_ladder = calibrate_ladder(policy, random_obs(policy.config, 16), (1.0, 0.5))
    assert state_ladder.layers == ["head.layers.0", "head.layers.1"]
    level = level_policy(policy, state_ladder, 0.5)
    assert level.head.hidden[0].num_units <= 8
    with pytest.raises(ValueError, match="does not fit"):
        level_policy(policy, ladder, 0.5)
    ungated = _policy(tiny_config(gate={"enabled": False}))
    with pytest.raises(ValueError, match="no gates"):
        calibrate_ladder(ungated, random_obs(ungated.config, 4))


def test_units_active_at_b1_outrank_never_active_ones_whatever_the_rank_budgets() -> None:
    """Ranked on b = 0.25's frequencies alone, a unit that fires only at b = 1 scores 0,
    like a never-active one: the level-1 model must still keep it (and drop those)."""
    from swan_policy.config import GateConfig, PolicyConfig

    torch.manual_seed(0)
    cfg = PolicyConfig(
        pixels=False,
        proprio_dim=1,
        action_dim=1,
        gate=GateConfig(linear_rank=1),
        head={"hidden": [4], "proprio_hidden": 0},
    )
    policy = SwanPolicy(cfg).eval()
    layer = policy.head.hidden[0]
    assert layer.gate_down is not None and layer.gate_up is not None
    with torch.no_grad():  # unit 0 always on, unit 1 on for x = 10 only, units 2-3 never
        layer.gate_down.weight.fill_(1.0)
        layer.gate_up.weight.copy_(torch.tensor([[0.0], [1.0], [0.0], [0.0]]))
        layer.gate_up.bias.copy_(torch.tensor([10.0, -5.0, -0.01, -0.01]))
    x = torch.zeros(20, 1)
    x[0] = 10.0
    ladder = calibrate_ladder(policy, {"proprio": x}, (1.0, 0.5), rank_budgets=[0.25])
    assert ladder.frequency["head.layers.0"] == [1.0, 0.05, 0.0, 0.0]
    assert ladder.keep(1.0)["head.layers.0"] == [0, 1]
    level = level_policy(policy, ladder, 1.0, gates="kept")
    obs = {"proprio": torch.tensor([[10.0]])}
    with torch.no_grad():
        torch.testing.assert_close(level(obs, 1.0), policy(obs, 1.0))

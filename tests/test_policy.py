from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from swan_policy.compact import compact_policy, keep_from_stats
from swan_policy.config import PolicyConfig
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import CheckpointError, load_tensors, save_tensors
from swan_policy.spec import ObservationError
from tests.conftest import random_obs, state_config, tiny_config


def _policy(seed: int = 0, **overrides: object) -> SwanPolicy:
    torch.manual_seed(seed)
    return SwanPolicy(tiny_config(**overrides)).eval()


@pytest.mark.parametrize("norm", ["fixed", "image"])
@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("budget", [1.0, 0.75, 0.5, 0.25])
def test_three_modes_agree(batch: int, budget: float, norm: str) -> None:
    policy = _policy(encoder={"channels": [8, 8], "strides": [2, 1], "input_norm": norm})
    obs = random_obs(policy.config, batch, seed=1)
    calib = random_obs(policy.config, 64, seed=2)
    with torch.no_grad():
        masked = policy(obs, budget, mode="masked")
        sparse = policy(obs, budget, mode="sparse")
        torch.testing.assert_close(sparse, masked, atol=1e-5, rtol=0)
        # compact: drop every unit never active on calibration + test inputs
        policy.reset_gate_stats()
        policy(calib, 1.0)
        policy(obs, 1.0)
        keep = keep_from_stats(policy)
        small = compact_policy(policy, keep).eval()
        compact = small(obs, budget)
        compact_sparse = small(obs, budget, mode="sparse")
    assert small.dense_macs() <= policy.dense_macs()
    torch.testing.assert_close(compact, masked, atol=1e-5, rtol=0)
    torch.testing.assert_close(compact_sparse, masked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("budget", [0.5, 0.25])
def test_modes_agree_when_every_first_layer_logit_ties(budget: float) -> None:
    """Under input_norm=image the first conv's gate reads zero channel means, so its
    logits are its biases: at init all equal. Masked (torch) and batch-1 sparse (numpy)
    must still keep the same units."""
    policy = _policy(
        encoder={"channels": [8, 8], "strides": [2, 1], "input_norm": "image"},
        gate={"init_bias": 1.0},  # every bias equal and positive: the default
    )
    obs = random_obs(policy.config, 10, seed=3)
    with torch.no_grad():
        masked = policy(obs, budget, mode="masked")
        for i in range(10):
            one = {k: v[i : i + 1] for k, v in obs.items()}
            sparse = policy(one, budget, mode="sparse")
            torch.testing.assert_close(sparse, masked[i : i + 1], atol=1e-5, rtol=0)


def test_compaction_removes_never_active_units() -> None:
    policy = _policy()
    with torch.no_grad():
        for layer in policy.gated_layers().values():
            bias = layer.gate_fc.bias if hasattr(layer, "gate_fc") else layer.gate_up.bias
            bias[: layer.num_units // 2] = -1e4  # these units can never fire
        obs = random_obs(policy.config, 16)
        ref = policy(obs)
        small = compact_policy(policy, keep_from_stats(policy)).eval()
        out = small(obs)
    assert small.config.encoder.channels == [4, 4]
    assert small.config.head.hidden == [8, 8]
    assert small.dense_macs() < 0.5 * policy.dense_macs()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_save_load_round_trip_is_bit_exact(tmp_path: Path) -> None:
    policy = _policy()
    policy.set_normalization(np.arange(5.0), np.full(5, 2.0), [-2.0, -1.0], [2.0, 3.0])
    policy.save_pretrained(tmp_path / "p")
    loaded = SwanPolicy.from_pretrained(tmp_path / "p").eval()
    assert loaded.config == policy.config
    for (k, a), (k2, b) in zip(
        policy.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(a, b)
    obs = {k: v[0].numpy() for k, v in random_obs(policy.config, 1).items()}
    np.testing.assert_array_equal(policy.act(obs, 0.5), loaded.act(obs, 0.5))
    assert not list((tmp_path / "p").glob("*.tmp"))


def test_detach_input_reaches_every_gate_and_survives_save_load(tmp_path: Path) -> None:
    policy = _policy(gate={"init_bias": 0.0, "detach_input": True})
    gates = list(policy.gates().values())
    assert len(gates) == 4 and all(g.detach_input for g in gates)
    assert not any(g.detach_input for g in _policy().gates().values())
    policy.save_pretrained(tmp_path / "p")
    loaded = SwanPolicy.from_pretrained(tmp_path / "p")
    assert all(g.detach_input for g in loaded.gates().values())


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (Path(self.marker).touch, ())  # unpickling creates the marker


@pytest.mark.parametrize("name", ["model.safetensors"])
def test_pickle_disguised_as_safetensors_is_refused(tmp_path: Path, name: str) -> None:
    policy = _policy()
    d = policy.save_pretrained(tmp_path / "p")
    marker = tmp_path / "pwned"
    (d / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors file"):
        SwanPolicy.from_pretrained(d)
    assert not marker.exists()


def test_truncated_weights_and_bad_dirs(tmp_path: Path) -> None:
    d = _policy().save_pretrained(tmp_path / "p")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        SwanPolicy.from_pretrained(d)
    with pytest.raises(CheckpointError, match="expected a policy directory"):
        SwanPolicy.from_pretrained(tmp_path / "missing")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SwanPolicy.from_pretrained(d)


def test_weights_that_do_not_fit_list_the_keys(tmp_path: Path) -> None:
    d = _policy().save_pretrained(tmp_path / "p")
    state = load_tensors(d / "model.safetensors")
    state.pop("head.out.bias")
    state["extra.weight"] = torch.zeros(1)
    state["head.out.weight"] = torch.zeros(3, 3)
    save_tensors(d / "model.safetensors", state)
    with pytest.raises(
        CheckpointError,
        match=r"missing keys: head\.out\.bias.*unexpected keys: "
        r"extra\.weight.*wrong shapes: head\.out\.weight",
    ):
        SwanPolicy.from_pretrained(d)


def test_act_validates_and_does_not_mutate() -> None:
    policy = _policy()
    obs = {k: v[0].numpy() for k, v in random_obs(policy.config, 1).items()}
    obs["proprio"] = obs["proprio"].astype(np.float64)
    before = {k: v.copy() for k, v in obs.items()}
    action = policy.act(obs)
    assert action.shape == (2,) and action.dtype == np.float32
    assert all(np.array_equal(before[k], obs[k]) for k in obs)
    assert obs["proprio"].dtype == np.float64
    bad = dict(obs, pixels=obs["pixels"].transpose(2, 0, 1).copy())
    with pytest.raises(ObservationError, match=r"'pixels'.*looks like CHW"):
        policy.act(bad)
    with pytest.raises(ObservationError, match=r"'pixels'.*expected dtype uint8, got float64"):
        policy.act(dict(obs, pixels=obs["pixels"].astype(np.float64)))
    nan = obs["proprio"].copy()
    nan[1] = np.nan
    with pytest.raises(ObservationError, match=r"'proprio'.*NaN"):
        policy.act(dict(obs, proprio=nan))
    with pytest.raises(ObservationError, match=r"missing \['proprio'\]"):
        policy.act({"pixels": obs["pixels"]})
    with pytest.raises(ObservationError, match=r"unexpected \['depth'\]"):
        policy.act(dict(obs, depth=obs["proprio"]))


def test_actions_are_bounded_and_unscaled() -> None:
    policy = _policy()
    policy.set_normalization(np.zeros(5), np.ones(5), [0.0, -3.0], [1.0, 3.0])
    with torch.no_grad():
        a = policy(random_obs(policy.config, 32))
    assert bool((a[:, 0] >= 0).all() and (a[:, 0] <= 1).all())
    assert bool((a[:, 1].abs() <= 3).all())
    with pytest.raises(ValueError, match="high > low"):
        policy.set_normalization(np.zeros(5), np.ones(5), [0.0, 1.0], [1.0, 1.0])


def test_loss_reports_and_backpropagates() -> None:
    policy = _policy(gate={"sparsity_weight": 0.1}).train()
    obs = random_obs(policy.config, 8)
    loss, info = policy.loss({"obs": obs, "actions": torch.zeros(8, 2)}, budget=0.5)
    loss.backward()
    assert set(info) == {"loss", "bc_loss", "sparsity", "active_fraction"}
    assert info["active_fraction"] <= 0.5
    assert policy.encoder.layers[0].gate_fc.weight.grad is not None


def test_sparsity_loss_is_unit_weighted() -> None:
    policy = _policy().train()
    policy.loss({"obs": random_obs(policy.config, 4), "actions": torch.zeros(4, 2)})
    sig_sum, units = 0.0, 0
    for gate in policy.gates().values():
        assert gate.last_logits is not None
        sig_sum += float(torch.sigmoid(gate.last_logits / gate.tau).mean(0).sum())
        units += gate.num_units
    assert abs(float(policy.sparsity_loss().detach()) - sig_sum / units) < 1e-6


def test_proprio_only_policy_modes_compaction_and_files(tmp_path: Path) -> None:
    cfg = state_config()
    torch.manual_seed(0)
    policy = SwanPolicy(cfg).eval()
    assert policy.encoder is None
    assert set(policy.obs_spec.entries) == {"proprio"}
    assert list(policy.gated_layers()) == ["head.layers.0", "head.layers.1"]
    obs = random_obs(cfg, 32)
    with torch.no_grad():
        for b in (1.0, 0.5, 0.25):
            masked = policy(obs, b, mode="masked")
            sparse = policy(obs, b, mode="sparse")
            torch.testing.assert_close(masked, sparse, atol=1e-5, rtol=0)
    # MACs: 4 -> 16 -> 16 -> 1 dense, identity proprio costs nothing
    assert policy.dense_macs() == 4 * 16 + 16 * 16 + 16 * 1
    policy.reset_gate_stats()
    with torch.no_grad():
        ref = policy(obs, 1.0)
    keep = keep_from_stats(policy)
    small = compact_policy(policy, keep).eval()
    with torch.no_grad():
        torch.testing.assert_close(small(obs, 1.0), ref, atol=1e-5, rtol=0)
    act = policy.act({"proprio": np.zeros(4, np.float32)})
    assert act.shape == (1,)
    with pytest.raises(ObservationError, match="pixels"):
        policy.act({"proprio": np.zeros(4, np.float32), "pixels": np.zeros((8, 8, 3), np.uint8)})
    loaded = SwanPolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(obs, 0.5), policy(obs, 0.5), atol=0, rtol=0)


def test_state_env_is_wrapped_as_proprio_and_resolves() -> None:
    from swan_policy.config import EnvConfig
    from swan_policy.envs import SpaceMismatchError, check_spaces, make_env, resolve_policy_config

    env = make_env(EnvConfig(id="InvertedPendulum-v5"))
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"proprio"} and obs["proprio"].dtype == np.float32
    with pytest.raises(SpaceMismatchError, match="policy.pixels=false"):
        resolve_policy_config(PolicyConfig(), env)
    pc = resolve_policy_config(PolicyConfig(pixels=False), env)
    assert (pc.proprio_dim, pc.action_dim, pc.image_hw) == (4, 1, None)
    policy = SwanPolicy(pc)
    check_spaces(policy, env)
    assert policy.act(obs).shape == (1,)
    env.close()

"""Bad spaces, actions and observations (RELIABILITY.md rows 4, 11, 12 and 13)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import swan_envs
from swan_policy.cli import main
from swan_policy.config import EnvConfig
from swan_policy.deploy import PolicyRuntime
from swan_policy.envs import SpaceMismatchError, check_spaces, make_env
from swan_policy.evaluate import act_batch, evaluate_policy
from swan_policy.policy import SwanPolicy
from swan_policy.spec import ArraySpec, ObservationError, ObsSpec
from tests.conftest import random_obs, state_config, tiny_config
from tests.reliability._bundles import linear_bundle


def _policy(**overrides: Any) -> SwanPolicy:
    torch.manual_seed(0)
    return SwanPolicy(tiny_config(**overrides)).eval()


# --------------------------------------------------------------------------- row 4
@pytest.fixture(scope="module")
def reach64() -> Iterator[gym.Env[Any, Any]]:
    env = make_env(EnvConfig(id="swan_envs/Reach-v0"))
    yield env
    env.close()


@pytest.fixture(scope="module")
def pendulum() -> Iterator[gym.Env[Any, Any]]:
    env = make_env(EnvConfig(id="InvertedPendulum-v5"))
    yield env
    env.close()


def test_row4_every_space_mismatch_is_named(
    reach64: gym.Env[Any, Any], pendulum: gym.Env[Any, Any]
) -> None:
    """Row 4: expected vs actual for pixels, proprio and action, and a missing key."""
    fits = _policy(image_hw=(64, 64), proprio_dim=6)
    check_spaces(fits, reach64)  # the reference: no error
    cases: list[tuple[SwanPolicy, gym.Env[Any, Any], str]] = [
        (
            _policy(image_hw=(32, 32), proprio_dim=6),
            reach64,
            r"observation 'pixels': policy expects \(32, 32, 3\), "
            r"env swan_envs/Reach-v0 gives \(64, 64, 3\)",
        ),
        (
            _policy(image_hw=(64, 64), proprio_dim=5),
            reach64,
            r"observation 'proprio': policy expects \(5,\), env swan_envs/Reach-v0 gives \(6,\)",
        ),
        (
            _policy(image_hw=(64, 64), proprio_dim=6, action_dim=3),
            reach64,
            r"action: policy outputs 3 values, env swan_envs/Reach-v0 expects 2",
        ),
        (fits, pendulum, r"policy expects 'pixels' but env InvertedPendulum-v5 has none"),
        (
            SwanPolicy(state_config(proprio_dim=4, action_dim=2)),
            pendulum,
            r"action: policy outputs 2 values, env InvertedPendulum-v5 expects 1",
        ),
    ]
    for policy, env, message in cases:
        with pytest.raises(SpaceMismatchError, match=message):
            check_spaces(policy, env)


def test_row4_the_deploy_runtime_is_checked_the_same_way(
    tmp_path: Path, pendulum: gym.Env[Any, Any]
) -> None:
    """Row 4: `swan deploy` checks a bundle against the env with the same function."""
    runtime = PolicyRuntime.load(linear_bundle(tmp_path / "b", np.ones((4, 2))))
    with pytest.raises(
        SpaceMismatchError, match=r"action: policy outputs 2 values, env InvertedPendulum-v5"
    ):
        check_spaces(runtime, pendulum)


def test_row4_evaluation_fails_before_any_env_worker_or_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Row 4: the error comes before the first step -- no vector env is even built."""
    from swan_policy import evaluate

    def no_workers(*args: object, **kwargs: object) -> None:
        raise AssertionError("a vector env was started for a policy that cannot act in it")

    monkeypatch.setattr(evaluate, "make_vec_env", no_workers)
    policy = _policy(image_hw=(16, 16), proprio_dim=6)
    env = EnvConfig(id="swan_envs/Reach-v0", kwargs={"width": 24, "height": 16})
    with pytest.raises(SpaceMismatchError, match=r"expects \(16, 16, 3\), .* gives \(16, 24, 3\)"):
        evaluate_policy(policy, env, 1, [1.0], workers=2)


def test_row4_swan_eval_on_another_env_is_one_line(
    run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Row 4 through the CLI: the run's config now names a 32x32 env; the policy is 16x16."""
    cfg = run_copy / "config.yaml"
    cfg.write_text(cfg.read_text().replace("width: 16", "width: 32"))
    out = run_copy / "eval.json"
    args = ["eval", "--run", str(run_copy), "--checkpoint", "last", "--workers", "1"]
    assert main([*args, "--episodes", "1", "--json", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(
        r"error: observation 'pixels': policy expects \(16, 16, 3\), "
        r"env swan_envs/Reach-v0 gives \(16, 32, 3\)",
        err[0],
    ), err
    assert not out.exists()


# --------------------------------------------------------------------------- row 11
BAD_ACTIONS = [
    ("nan", lambda n: np.full(n, np.nan, np.float32), "must be finite"),
    ("inf", lambda n: np.concatenate([[np.inf], np.zeros(n - 1)]), "must be finite"),
    ("shape", lambda n: np.zeros(n + 1, np.float32), rf"got shape \({'{n}'}"),
    ("batch", lambda n: np.zeros((1, n), np.float32), r"got shape \(1, "),
    ("scalar", lambda n: 0.5, r"got shape \(\)"),
    ("text", lambda n: "left", "numeric array"),
]


@pytest.mark.parametrize("env_id", [*swan_envs.ENV_IDS, "InvertedPendulum-v5"])
def test_row11_bad_actions_never_reach_mujoco(env_id: str) -> None:
    """Row 11: for every registered env (through the full gym.make wrapper stack) and
    for a gymnasium env made by swan_policy.envs.make_env: a clear ValueError, and
    the simulator's time, state and controls are untouched."""
    env = make_env(EnvConfig(id=env_id))
    env.reset(seed=0)
    sim: Any = env.unwrapped
    n = int(env.action_space.shape[0])  # type: ignore[index]  # a Box: shape is a tuple
    before = (sim.data.time, sim.data.qpos.copy(), sim.data.qvel.copy(), sim.data.ctrl.copy())
    for name, make, message in BAD_ACTIONS:
        with pytest.raises(ValueError, match=message.replace("{n}", str(n + 1))):
            env.step(make(n))
        assert sim.data.time == before[0], name
        for got, want in zip(
            (sim.data.qpos, sim.data.qvel, sim.data.ctrl), before[1:], strict=True
        ):
            assert np.array_equal(got, want), name
    env.step(np.zeros(n, np.float32))  # and the env still works
    assert sim.data.time > before[0]
    env.close()


# --------------------------------------------------------------------------- row 12
def _nan_weights(policy: SwanPolicy) -> SwanPolicy:
    with torch.no_grad():
        policy.head.out.bias[0] = float("nan")  # used whatever units the gates pick
    return policy


def test_row12_a_nan_action_is_never_returned() -> None:
    """Row 12: NaN weights -> FloatingPointError from act() and the evaluator's batched
    act, never a NaN action handed to an env."""
    policy = _nan_weights(_policy())
    obs = {k: v.numpy() for k, v in random_obs(policy.config, 3).items()}
    with pytest.raises(FloatingPointError, match="non-finite action"):
        policy.act({k: v[0] for k, v in obs.items()})
    with pytest.raises(FloatingPointError, match="non-finite action"):
        act_batch(policy, obs, 0.5)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no overflow warning per step
def test_row12_runtime_raises_on_a_nan_action_and_on_nan_input(tmp_path: Path) -> None:
    """Row 12, torch-free side: a graph whose output is NaN raises, naming the level;
    NaN/Inf observations (also a float64 that overflows float32) name the key."""
    weight = np.ones((4, 2))
    weight[2, 1] = np.nan
    runtime = PolicyRuntime.load(linear_bundle(tmp_path / "nan", weight))
    with pytest.raises(FloatingPointError, match="level 1 produced a non-finite action"):
        runtime.act({"proprio": np.ones(4, np.float32)})
    ok = PolicyRuntime.load(linear_bundle(tmp_path / "ok", np.ones((4, 2))))
    for value in (np.nan, np.inf, -np.inf, 1e300):
        proprio = np.zeros(4)
        proprio[1] = value
        with pytest.raises(
            ObservationError, match=r"observation\['proprio'\]: contains NaN or Inf"
        ):
            ok.act({"proprio": proprio})
    assert ok.stats()["steps"] == 0


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no overflow warning per step
def test_row12_policy_act_rejects_float64_that_overflows_float32() -> None:
    """Row 12: 1e300 is finite in float64 but inf once cast; it must not get through."""
    policy = _policy()
    obs = {k: v[0].numpy() for k, v in random_obs(policy.config, 1).items()}
    proprio = obs["proprio"].astype(np.float64)
    proprio[0] = 1e300
    with pytest.raises(ObservationError, match=r"'proprio'\]: contains NaN or Inf"):
        policy.act(dict(obs, proprio=proprio))


@pytest.mark.filterwarnings("error::UserWarning")  # torch's non-writable-array warning
def test_row13_flipped_cropped_and_read_only_images_act_like_their_copies() -> None:
    """A camera frame flipped with ``img[::-1]`` (negative strides), a crop of a bigger
    frame, or a read-only buffer is a valid image: the same action as its contiguous copy,
    not torch's stride error."""
    policy = _policy()
    obs = {k: v[0].numpy() for k, v in random_obs(policy.config, 1).items()}
    h, w, c = obs["pixels"].shape
    big = np.random.default_rng(0).integers(0, 256, (2 * h, w + 3, c), dtype=np.uint8)
    views = {
        "flipped": big[: 2 * h : 2][::-1, :w],
        "cropped": big[:h, 3:],
        "read_only": np.require(big[h:, :w], requirements="C").copy(),
    }
    views["read_only"].flags.writeable = False
    for name, img in views.items():
        expected = policy.act(dict(obs, pixels=np.ascontiguousarray(img)))
        np.testing.assert_array_equal(policy.act(dict(obs, pixels=img)), expected, err_msg=name)


# --------------------------------------------------------------------------- row 13
def test_row13_batched_torch_forward_names_key_expected_and_actual() -> None:
    """Row 13: the torch entry point (training, evaluation) checks layout, dtype, keys."""
    policy = _policy()
    obs = random_obs(policy.config, 2)
    chw = obs["pixels"].permute(0, 3, 1, 2)
    cases: list[tuple[dict[str, torch.Tensor], str]] = [
        (
            dict(obs, pixels=chw),
            r"'pixels'\]: expected shape \(B, 16, 16, 3\), got \(2, 3, 16, 16\)",
        ),
        (dict(obs, pixels=obs["pixels"].float()), r"'pixels'\]: expected dtype uint8, got torch"),
        (dict(obs, proprio=obs["proprio"][:, :4]), r"'proprio'\]: expected shape \(B, 5\)"),
        ({"pixels": obs["pixels"]}, r"keys: expected \['pixels', 'proprio'\], got \['pixels'\]"),
        (dict(obs, depth=obs["proprio"]), r"got \['depth', 'pixels', 'proprio'\]"),
    ]
    for bad, message in cases:
        with pytest.raises(ObservationError, match=message):
            policy(bad)


SPEC = ObsSpec({"pixels": ArraySpec((8, 8, 3), "uint8"), "proprio": ArraySpec((3,), "float32")})


@pytest.mark.parametrize(
    ("obs", "message"),
    [
        ([np.zeros(3)], r"observation must be a dict with keys \['pixels', 'proprio'\], got list"),
        (
            {"pixels": np.zeros((8, 8, 3), np.uint8), "proprio": [0.0, 0.0, 0.0]},
            r"observation\['proprio'\]: expected a numpy array, got list",
        ),
        (
            {"pixels": torch.zeros(8, 8, 3, dtype=torch.uint8), "proprio": np.zeros(3)},
            r"observation\['pixels'\]: expected a numpy array, got Tensor",
        ),
        (
            {"pixels": np.zeros((3, 8, 8), np.uint8), "proprio": np.zeros(3)},
            r"expected shape \(8, 8, 3\), got \(3, 8, 8\) \(looks like CHW; expected HWC\)",
        ),
        (
            {"pixels": np.zeros((8, 8, 3), np.float64), "proprio": np.zeros(3)},
            r"observation\['pixels'\]: expected dtype uint8, got float64",
        ),
        (
            {"pixels": np.zeros((8, 8, 3), np.uint8), "proprio": np.zeros(3, np.int32)},
            r"observation\['proprio'\]: expected a float dtype \(float32\), got int32",
        ),
        (
            {"pixels": np.zeros((8, 8, 3), np.uint8), "proprio": np.float32(0.0)},
            r"observation\['proprio'\]: expected a numpy array, got float32",
        ),
    ],
)
def test_row13_validate_names_the_key_and_never_mutates(obs: Any, message: str) -> None:
    """Row 13: each wrong input is refused with key, expected and actual."""
    snapshot = (
        {k: np.array(v, copy=True) for k, v in obs.items() if isinstance(v, np.ndarray)}
        if isinstance(obs, dict)
        else {}
    )
    with pytest.raises(ObservationError, match=message):
        SPEC.validate(obs)
    for k, v in snapshot.items():
        assert np.array_equal(obs[k], v) and obs[k].dtype == v.dtype


def test_row13_batched_validation_and_copies() -> None:
    """Row 13, batched: mismatched batch sizes and a missing batch axis are named; the
    validated arrays never alias a caller's float array."""
    good: dict[str, np.ndarray] = {
        "pixels": np.zeros((2, 8, 8, 3), np.uint8),
        "proprio": np.zeros((2, 3), np.float32),
    }
    out = SPEC.validate(good, batched=True)
    out["proprio"][:] = 7.0
    assert not np.any(good["proprio"])  # a copy: the caller's array is untouched
    with pytest.raises(ObservationError, match=r"'proprio'\]: batch size 3 != 2"):
        SPEC.validate(dict(good, proprio=np.zeros((3, 3))), batched=True)
    with pytest.raises(ObservationError, match=r"'proprio'\]: missing batch axis"):
        SPEC.validate(dict(good, proprio=np.zeros(())), batched=True)

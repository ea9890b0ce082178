"""SB3 integration (issue 5): gated PPO/SAC run, sparsity acts, seeds, exact extraction, CLI."""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from swan_policy.cli import main
from swan_policy.config import ConfigError, EnvConfig, load_config
from swan_policy.envs import make_env
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import load_json, save_tensors
from swan_policy.spec import PIXELS, PROPRIO
from swan_policy.train.checkpoint import latest_checkpoint
from swan_policy.train.rl import (
    GateStatsCallback,
    SwanActorCriticPolicy,
    SwanSACPolicy,
    actor_active_fraction,
    attach_aux_loss,
    extract_swan_policy,
    fold_obs_normalization,
    swan_of,
)
from swan_policy.train.rl_checkpoint import (
    REPLAY,
    _replay_arrays,
    _restore_replay,
    restore_rl_checkpoint,
)
from swan_policy.train.rl_run import build_model, make_rl_env, train_rl
from tests.reliability._runs import TINY_DAGGER, set_args, tiny_policy

REPO = Path(__file__).resolve().parents[2]
PENDULUM = EnvConfig(id="InvertedPendulum-v5")
REACH16 = EnvConfig(id="swan_envs/Reach-v0", kwargs={"width": 16, "height": 16})
_STATE_KW: dict[str, Any] = {
    "policy_config": {
        "pixels": False,
        "head": {"hidden": [16, 16], "proprio_hidden": 0},
        "gate": {"sparsity_weight": 0.0},
    },
    "critic_hidden": [16, 16],
}
_PIXEL_KW: dict[str, Any] = {
    "policy_config": {
        "encoder": {"channels": [4, 4], "strides": [2, 1]},
        "head": {"hidden": [16, 16], "proprio_hidden": 8},
    },
    "critic_hidden": [16],
}


SAC_TINY: dict[str, Any] = {"learning_starts": 32, "batch_size": 16, "buffer_size": 500}


def state_kw(**changes: Any) -> dict[str, Any]:
    """Fresh policy kwargs (SB3 adds keys to the dict it is given)."""
    return {**copy.deepcopy(_STATE_KW), **changes}


def pixel_kw() -> dict[str, Any]:
    return copy.deepcopy(_PIXEL_KW)


def pendulum_vec(n: int = 1, normalize: bool = False) -> Any:
    vec: Any = DummyVecEnv([lambda: make_env(PENDULUM)] * n)
    return VecNormalize(vec, norm_obs_keys=[PROPRIO]) if normalize else vec


def ppo(env: Any, kwargs: dict[str, Any] | None = None, seed: int = 0, **hp: Any) -> PPO:
    settings = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, **hp}
    kwargs = state_kw() if kwargs is None else kwargs
    return PPO(SwanActorCriticPolicy, env, policy_kwargs=kwargs, seed=seed, **settings)


def raw_batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {PROPRIO: rng.normal(scale=0.3, size=(n, 4)).astype(np.float32)}


# ----------------------------------------------------------------------------- smoke tests
def test_gated_ppo_and_sac_run_on_state_observations() -> None:
    model = ppo(pendulum_vec(2))
    model.learn(256, callback=GateStatsCallback())
    assert model.num_timesteps >= 256
    actions, _ = model.predict(raw_batch(5), deterministic=True)
    assert actions.shape == (5, 1) and np.all(np.abs(actions) <= 3.0)
    # SB3's own flat Box observations work as well ({"proprio": obs} inside)
    import gymnasium as gym

    flat = ppo(gym.make("InvertedPendulum-v5"), n_steps=32, n_epochs=1)
    flat.learn(32)
    sac = SAC(SwanSACPolicy, make_env(PENDULUM), policy_kwargs=state_kw(), **SAC_TINY)
    sac.learn(64, callback=GateStatsCallback())
    assert sac.actor.swan.action_high.tolist() == [3.0]
    assert actor_active_fraction(sac.policy) is not None


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_dict_observations_with_pixels(algo: str) -> None:
    env = make_env(REACH16)
    if algo == "ppo":
        model: Any = ppo(env, pixel_kw(), n_steps=32, batch_size=16, n_epochs=1)
        model.learn(64)
    else:
        model = SAC(SwanSACPolicy, env, policy_kwargs=pixel_kw(), **SAC_TINY)
        model.learn(48)
    # SB3 transposed the images to CHW; the SwanPolicy still gets (and expects) HWC
    assert model.observation_space[PIXELS].shape == (3, 16, 16)
    policy = extract_swan_policy(model)
    assert policy.obs_spec.entries[PIXELS].shape == (16, 16, 3)
    obs, _ = make_env(REACH16).reset(seed=4)
    sb3_action, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(policy.act(obs), sb3_action, atol=1e-5)


def test_policy_refuses_spaces_it_cannot_serve() -> None:
    from swan_policy.envs import SpaceMismatchError

    with pytest.raises(SpaceMismatchError, match="policy.pixels is false"):
        ppo(make_env(REACH16), state_kw())
    with pytest.raises(ValueError, match="gSDE"):
        PPO(SwanActorCriticPolicy, pendulum_vec(), policy_kwargs=state_kw(), use_sde=True)


# ----------------------------------------------------------------------------- mechanisms
def test_attached_loss_adds_its_gradient_and_leaves_the_value() -> None:
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    x = w * 3.0
    aux = (w**2).sum()
    y = attach_aux_loss(x, 0.5 * aux)
    assert torch.equal(y, x)
    y.sum().backward()
    assert torch.allclose(w.grad, torch.full((2,), 3.0) + 0.5 * 2 * w.detach())


@pytest.mark.parametrize(
    ("mode", "tau"), [("l1", 1.0), ("l1", 0.5), ("target", 1.0), ("target", 0.7)]
)
def test_injected_sparsity_gradient_equals_the_explicit_term(mode: str, tau: float) -> None:
    from swan_policy.nn.gates import SwanGate

    s = (torch.randn(16, 8) + 1.0).requires_grad_()
    kwargs: dict[str, Any] = {"tau": tau, "sparsity": mode, "target_rate": 0.2}
    injected = SwanGate(8, **kwargs)
    injected.inject_weight = 0.7
    (injected(s) * torch.arange(8.0)).sum().backward()
    grad_injected = s.grad.clone()
    s.grad = None
    plain = SwanGate(8, **kwargs)
    loss = (plain(s) * torch.arange(8.0)).sum() + 0.7 * plain.regulariser()
    loss.backward()
    assert torch.allclose(grad_injected, s.grad, atol=1e-7)
    assert float(plain.regulariser().detach()) > 0.0  # the term is active in both modes


def test_ppo_update_gradient_includes_exactly_the_bc_sparsity_term() -> None:
    kw = state_kw()
    kw["policy_config"]["gate"].update(sparsity="target", target_rate=0.2, sparsity_weight=0.3)
    model = ppo(pendulum_vec(), kw)
    policy = model.policy
    obs = {PROPRIO: torch.as_tensor(raw_batch(32)[PROPRIO])}
    actions = torch.randn(32, 1)

    def grads(explicit: bool) -> list[torch.Tensor]:
        policy.zero_grad()
        if explicit:  # no injection: add the term to the loss instead
            for gate in swan_of(model).gates().values():
                gate.inject_weight = 0.0
        values, log_prob, _ = policy.evaluate_actions(obs, actions)
        loss = -log_prob.mean() + values.pow(2).mean()
        if explicit:
            loss = loss + 0.3 * swan_of(model).sparsity_loss()
        loss.backward()
        return [p.grad.clone() for p in swan_of(model).parameters() if p.grad is not None]

    injected = grads(False)
    explicit = grads(True)
    assert len(injected) == len(explicit) > 0
    for a, b in zip(injected, explicit, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_sparsity_pressure_lowers_the_active_fraction() -> None:
    fractions = {}
    for weight in (0.0, 1.0):
        kw = state_kw()
        kw["policy_config"]["gate"].update(sparsity_weight=weight, init_bias=0.2)
        model = ppo(pendulum_vec(2), kw, seed=3, n_epochs=4, learning_rate=3e-3)
        model.learn(512)
        swan = swan_of(model).eval()
        with torch.no_grad():
            swan({PROPRIO: torch.as_tensor(raw_batch(256)[PROPRIO])})
        fractions[weight] = swan.last_active_fraction()
    assert fractions[0.0] > 0.8  # gates start open (init bias > 0)
    assert fractions[1.0] < fractions[0.0] - 0.2


def test_sandwich_trains_lower_budgets_towards_the_full_output() -> None:
    kw = state_kw(sandwich={"b_min": 0.25, "n_random_budgets": 0, "distill_weight": 5.0})
    gaps = {}
    for name, kwargs in (("off", state_kw()), ("on", kw)):
        model = ppo(pendulum_vec(2), kwargs, seed=1, n_epochs=4)
        model.learn(512)
        swan = swan_of(model).eval()
        obs = {PROPRIO: torch.as_tensor(raw_batch(256)[PROPRIO])}
        with torch.no_grad():
            gaps[name] = float((swan(obs, 1.0) - swan(obs, 0.25)).abs().mean())
    assert gaps["on"] < gaps["off"]


def test_same_seed_same_rollouts_different_seed_differs() -> None:
    def run(seed: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        model = ppo(pendulum_vec(2), seed=seed, n_steps=64)
        model.learn(192)
        buf = model.rollout_buffer
        params = torch.cat([p.detach().flatten() for p in model.policy.parameters()])
        return buf.actions.copy(), buf.rewards.copy(), params

    a1, r1, p1 = run(0)
    a2, r2, p2 = run(0)
    a3, _, p3 = run(1)
    assert np.array_equal(a1, a2) and np.array_equal(r1, r2) and torch.equal(p1, p2)
    assert not np.array_equal(a1, a3) and not torch.equal(p1, p3)


def test_vecnormalize_statistics_fold_into_the_policy() -> None:
    vec = pendulum_vec(2, normalize=True)
    model = ppo(vec)
    model.learn(128)
    policy = extract_swan_policy(model)
    # observations the env produces (VecNormalize clips beyond 10 std, which the policy
    # does not: statistics from 128 steps make random vectors hit that clip)
    seen = {PROPRIO: model.rollout_buffer.observations[PROPRIO].reshape(-1, 4)[:8]}
    raw = {PROPRIO: vec.unnormalize_obs(seen)[PROPRIO].astype(np.float32)}
    sb3_action, _ = model.predict(vec.normalize_obs(raw), deterministic=True)
    with torch.no_grad():
        ours = policy({PROPRIO: torch.as_tensor(raw[PROPRIO])}).numpy()
    np.testing.assert_allclose(ours, sb3_action, atol=1e-5)
    # folding composes with statistics the policy already had
    p = SwanPolicy(policy.config)
    p.set_normalization(np.full(4, 0.5), np.full(4, 2.0), p.action_low, p.action_high)
    fold_obs_normalization(p, np.ones(4), np.full(4, 9.0), 0.0)
    assert torch.allclose(p.proprio_mean, torch.full((4,), 1.0 + 3.0 * 0.5))
    assert torch.allclose(p.proprio_std, torch.full((4,), 6.0))


# ----------------------------------------------------------------------------- runs
def tiny_args(tmp: Path, *extra: str) -> list[str]:
    sets = [
        "policy.head.hidden=[16, 16]",
        "rl.critic_hidden=[16]",
        "rl.total_timesteps=256",
        "rl.n_envs=2",
        "rl.hyperparams={n_steps: 64, batch_size: 64, n_epochs: 2}",
        "eval.episodes=2",
        "eval.workers=1",
        "log.checkpoint_every=128",
        *extra,
    ]
    return [a for s in sets for a in ("--set", s)]


@pytest.mark.parametrize("method", ["ppo", "sac"])
def test_rl_checkpoint_round_trips_into_swanpolicy(tmp_path: Path, method: str) -> None:
    overrides = tiny_args(tmp_path, f"method={method}", "rl.normalize=true")[1::2]
    if method == "sac":
        overrides += ["rl.hyperparams={learning_starts: 64, buffer_size: 1000}"]
    cfg = load_config(REPO / "configs" / "inverted_pendulum_ppo.yaml", overrides)
    final = train_rl(cfg, tmp_path / "run", show=False)
    assert latest_checkpoint(tmp_path / "run") == final
    policy = SwanPolicy.from_pretrained(final)
    # a fresh model restored from the checkpoint predicts what the saved SwanPolicy does
    saved_cfg = load_config(tmp_path / "run" / "config.yaml")
    env = make_rl_env(saved_cfg)
    model = build_model(saved_cfg, env)
    state = restore_rl_checkpoint(model, final)
    assert state.step == model.num_timesteps >= 256
    raw = raw_batch(6, seed=5)
    vn = model.get_vec_normalize_env()
    assert vn is not None and vn.obs_rms[PROPRIO].count > 1  # statistics came back
    sb3_action, _ = model.predict(vn.normalize_obs(raw), deterministic=True)
    with torch.no_grad():
        ours = policy({PROPRIO: torch.as_tensor(raw[PROPRIO])}).numpy()
    np.testing.assert_allclose(ours, sb3_action, atol=1e-5)
    if method == "sac":
        assert model.replay_buffer.pos == state.extras["replay"]["pos"] > 0
    env.close()


def test_only_the_newest_sac_checkpoint_keeps_the_replay_buffer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = tiny_args(tmp_path, "method=sac")[1::2]
    overrides += ["rl.hyperparams={learning_starts: 64, buffer_size: 1000}"]
    cfg = load_config(REPO / "configs" / "inverted_pendulum_ppo.yaml", overrides)
    final = train_rl(cfg, tmp_path / "run", show=False)
    steps = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert len(steps) >= 2 and final in steps
    # one buffer on disk, in the checkpoint `last` points to
    assert [s for s in steps if (s / REPLAY).is_file()] == [final]
    older = next(s for s in steps if s != final)
    assert load_json(older / "trainer_state.json")["extras"]["replay"] is not None
    saved_cfg = load_config(tmp_path / "run" / "config.yaml")
    env = make_rl_env(saved_cfg)
    model = build_model(saved_cfg, env)
    with caplog.at_level(logging.WARNING):
        restore_rl_checkpoint(model, older)  # still resumable, with an empty buffer
    assert model.replay_buffer.pos == 0 and not model.replay_buffer.full
    assert f"no {REPLAY}" in caplog.text and str(older) in caplog.text
    env.close()


def test_resume_continues_the_warm_up_action_sampler(tmp_path: Path) -> None:
    """SAC's random actions before learning_starts continue the saved stream on resume,
    not the seeded stream again."""
    from swan_policy.train.rl_checkpoint import save_rl_checkpoint

    def sac() -> SAC:
        return SAC(SwanSACPolicy, pendulum_vec(), policy_kwargs=state_kw(), seed=0, **SAC_TINY)

    model = sac()
    first = [model.action_space.sample() for _ in range(3)]
    ckpt = save_rl_checkpoint(tmp_path, model, 3, None, save_replay=False)
    expected = [model.action_space.sample() for _ in range(3)]
    fresh = sac()
    np.testing.assert_array_equal(fresh.action_space.sample(), first[0])  # seeded anew
    fresh = sac()
    restore_rl_checkpoint(fresh, ckpt)
    np.testing.assert_array_equal([fresh.action_space.sample() for _ in range(3)], expected)


def test_replay_round_trip_keeps_the_last_next_observation_with_optimize_memory_usage(
    tmp_path: Path,
) -> None:
    obs_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    act_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def buffer() -> ReplayBuffer:
        return ReplayBuffer(
            8, obs_space, act_space, optimize_memory_usage=True, handle_timeout_termination=False
        )

    rng = np.random.default_rng(0)
    saved = buffer()
    for _ in range(5):  # not full: the last transition's next observation sits at pos
        obs, nxt = rng.normal(size=(2, 1, 3)).astype(np.float32)
        saved.add(obs, nxt, np.zeros((1, 1)), np.ones(1), np.zeros(1), [{}])
    arrays = _replay_arrays(saved)
    save_tensors(tmp_path / REPLAY, {k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    restored = buffer()
    _restore_replay(restored, tmp_path / REPLAY, saved.pos, saved.full)
    idx = np.arange(5)
    np.testing.assert_array_equal(
        restored._get_samples(idx).next_observations.numpy(),
        saved._get_samples(idx).next_observations.numpy(),
    )


@pytest.mark.parametrize("method", ["ppo", "sac"])
def test_pixel_run_with_vecnormalize_trains_restores_and_extracts(
    tmp_path: Path, method: str
) -> None:
    # SAC stores VecNormalize.get_original_obs(): the images must be CHW below VecNormalize
    hyperparams = (
        "{n_steps: 32, batch_size: 16, n_epochs: 1}"
        if method == "ppo"
        else "{learning_starts: 16, batch_size: 8, buffer_size: 100}"
    )
    sets = [
        *tiny_policy(16),
        f"method={method}",
        "rl.n_envs=1",
        "rl.subproc=false",
        "rl.normalize=true",
        "rl.critic_hidden=[16]",
        "rl.total_timesteps=64",
        f"rl.hyperparams={hyperparams}",
        "eval.episodes=1",
        "eval.workers=1",
        "eval.budgets=[1.0]",
        "log.checkpoint_every=32",
        "log.tensorboard=false",
    ]
    cfg = load_config(REPO / "configs" / "reach_ppo.yaml", sets)
    final = train_rl(cfg, tmp_path / "run", show=False)
    policy = SwanPolicy.from_pretrained(final)
    saved_cfg = load_config(tmp_path / "run" / "config.yaml")
    env = make_rl_env(saved_cfg)
    model = build_model(saved_cfg, env)
    restore_rl_checkpoint(model, final)
    vn = model.get_vec_normalize_env()
    assert vn is not None and vn.obs_rms[PROPRIO].count > 1
    assert model.observation_space[PIXELS].shape == (3, 16, 16)
    obs, _ = make_env(saved_cfg.env).reset(seed=3)
    # proprio at the running mean: VecNormalize's clip (not folded) stays out of play
    obs[PROPRIO] = vn.obs_rms[PROPRIO].mean.astype(np.float32)
    sb3_action, _ = model.predict(vn.normalize_obs(obs), deterministic=True)
    np.testing.assert_allclose(policy.act(obs), sb3_action, atol=1e-5)
    env.close()


def test_bad_hyperparameters_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(REPO / "configs" / "inverted_pendulum_ppo.yaml")
    args = ["train", "--config", config, "--run-dir", str(tmp_path / "r"), "--quiet"]
    assert main([*args, "--set", "rl.hyperparams={n_stepz: 3}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: rl.hyperparams") and err.count("\n") == 1
    assert main([*args, "--set", "rl.hyperparams={seed: 3}"]) == 2
    assert "set by the run itself" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="rl.teacher"):
        load_config(REPO / "configs" / "reach_distill.yaml", ["rl.teacher.run=x"])


def test_cli_train_resume_eval_in_a_subprocess(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    config = str(REPO / "configs" / "inverted_pendulum_ppo.yaml")
    args = ["train", "--config", config, "--run-dir", str(run), "--quiet", *tiny_args(tmp_path)]
    cmd = [sys.executable, "-m", "swan_policy.cli", *args]
    env = {**os.environ, "MUJOCO_GL": "egl"}
    first = subprocess.run([*cmd, "--n-envs", "2"], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert latest_checkpoint(run) == run / "checkpoints" / "step_256"
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    more = [*cmd, "--resume", "--set", "rl.total_timesteps=512"]
    second = subprocess.run(more, capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr
    assert latest_checkpoint(run) == run / "checkpoints" / "step_512"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_keys = set().union(*(r for r in records if r["kind"] == "train"))
    assert {"gates/actor_active", "gates/actor/head.layers.0", "train/loss"} <= train_keys
    assert [r["step"] for r in records if r["kind"] == "eval"] == [256, 512]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert load_config(run / "config.yaml").policy.proprio_dim == 4
    # swan eval reads the RL run like any other
    out = tmp_path / "eval.json"
    ev = ["eval", "--run", str(run), "--episodes", "2", "--budgets", "1,0.5", "--workers", "1"]
    assert main([*ev, "--json", str(out)]) == 0
    assert [r["budget"] for r in json.loads(out.read_text())["results"]] == [1.0, 0.5]


def test_nan_weights_stop_with_the_one_line_error_and_keep_the_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # NaN weights between checkpoints: SB3's Normal(loc=NaN) check raises a ValueError in
    # the next rollout, before any checkpoint could report them (RELIABILITY.md row 12)
    real_train, calls = PPO.train, []

    def train_then(self: PPO, poison: Any) -> None:
        real_train(self)
        calls.append(1)
        if len(calls) == 3:  # after the update that follows the checkpoint at step 64
            poison(self)

    def nan_weight(model: PPO) -> None:
        with torch.no_grad():
            swan_of(model).head.out.weight[0, 0] = float("nan")

    def unrelated(model: PPO) -> None:
        raise ValueError("an unrelated bug")

    config = str(REPO / "configs" / "inverted_pendulum_ppo.yaml")
    sets = tiny_args(
        tmp_path,
        "rl.n_envs=1",
        "rl.hyperparams={n_steps: 32, batch_size: 32, n_epochs: 1}",
        "log.checkpoint_every=64",
        "log.tensorboard=false",
        "eval.at_end=false",
    )
    run = tmp_path / "run"
    monkeypatch.setattr(PPO, "train", lambda self: train_then(self, nan_weight))
    assert main(["train", "--config", config, "--run-dir", str(run), "--quiet", *sets]) == 2
    err = capsys.readouterr().err
    step_64 = run / "checkpoints" / "step_64"
    assert err == (
        f"error: non-finite parameters at step 96; stopped. Last good checkpoint: {step_64}\n"
    )
    assert latest_checkpoint(run) == step_64
    # any other ValueError out of learn() stays what it is
    calls.clear()
    monkeypatch.setattr(PPO, "train", lambda self: train_then(self, unrelated))
    cfg = load_config(config, sets[1::2])
    with pytest.raises(ValueError, match="an unrelated bug"):
        train_rl(cfg, tmp_path / "other", show=False)


def test_ctrl_c_checkpoints_exits_130_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = str(REPO / "configs" / "inverted_pendulum_ppo.yaml")
    long = tiny_args(
        tmp_path, "rl.total_timesteps=10000000", "eval.at_end=false", "rl.normalize=true"
    )
    cmd = [sys.executable, "-m", "swan_policy.cli", "train", "--config", config]
    proc = subprocess.Popen(
        [*cmd, "--run-dir", str(run), "--quiet", *long],
        env={**os.environ, "MUJOCO_GL": "egl"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    step = int(ckpt.name.split("_")[1])
    assert step >= 128 and step % 128 == 0  # a rollout boundary: no partial rollout kept
    # nor its observations in the normaliser: 2 reset observations + one per env step
    counts = load_json(ckpt / "vecnormalize.json")["obs_rms"][PROPRIO]["count"]
    assert counts == pytest.approx(2 + step + 1e-4, abs=1e-6)
    resume = ["train", "--config", config, "--run-dir", str(run), "--quiet", "--resume"]
    more = tiny_args(tmp_path, f"rl.total_timesteps={step + 128}", "eval.at_end=false")
    assert main([*resume, *more]) == 0
    assert latest_checkpoint(run) == run / "checkpoints" / f"step_{step + 128}"


def test_distill_teacher_labels_the_pixel_student(tmp_path: Path) -> None:
    import yaml

    teacher = yaml.safe_load((REPO / "configs" / "reach_state_ppo.yaml").read_text())
    teacher["policy"]["head"]["hidden"] = [16, 16]
    teacher["rl"].update(
        total_timesteps=128,
        critic_hidden=[16],
        hyperparams={"n_steps": 64, "batch_size": 64, "n_epochs": 1},
    )
    teacher["eval"].update(episodes=2, workers=1, at_end=False)
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    teacher_sets = [f"rl.teacher.config={tmp_path / 'teacher.yaml'}", "rl.n_envs=2"]
    sets = [*tiny_policy(), *teacher_sets, "demos.episodes=3", *TINY_DAGGER, "eval.budgets=[1.0]"]
    run = tmp_path / "run"
    args = ["train", "--config", str(REPO / "configs" / "reach_distill.yaml")]
    args += ["--run-dir", str(run), "--quiet", *set_args(sets)]
    assert main(args) == 0
    assert latest_checkpoint(run / "teacher") == run / "teacher" / "checkpoints" / "step_128"
    assert latest_checkpoint(run) == run / "checkpoints" / "step_9"
    assert (run / "dagger" / "round_0.safetensors").is_file()  # teacher-driven demos
    assert (run / "dagger" / "round_1.safetensors").is_file()
    assert not (tmp_path / "data").exists()  # no scripted-expert demo file
    # the labels are the teacher's actions on the env's privileged state
    from swan_policy.train.labellers import teacher_labeller
    from swan_policy.train.rl_run import run_policy_dir

    teacher_dir = run_policy_dir(run / "teacher")
    env = teacher_labeller(teacher_dir)(make_env(EnvConfig(**{**REACH16.model_dump()})))
    _, info = env.reset(seed=0)
    _, _, _, _, info = env.step(np.zeros(2, dtype=np.float32))
    expected = SwanPolicy.from_pretrained(teacher_dir).act(env.unwrapped.state_observation())
    np.testing.assert_array_equal(info["expert_action"], expected)
    # resume: the finished teacher is reused, the student continues
    stamp = (run / "teacher" / "checkpoints" / "last").stat().st_mtime_ns
    assert main([*args, "--resume", "--set", "bc.steps=9"]) == 0
    assert latest_checkpoint(run) == run / "checkpoints" / "step_12"
    assert (run / "teacher" / "checkpoints" / "last").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "name",
    [
        "SwanActorCriticPolicy",
        "SwanSACPolicy",
        "SwanSACActor",
        "SwanContinuousCritic",
        "SwanFeaturesExtractor",
    ],
)
def test_sb3_class_paths_of_older_saves_still_resolve(name: str) -> None:
    """SB3 .zip files store their policy classes by reference, as
    ``swan_policy.train.rl.<Class>`` for saves made before the module was split: the name
    must still resolve there, to the class that new code uses."""
    import importlib

    from swan_policy.train import rl_core, rl_sac

    old_home = importlib.import_module("swan_policy.train.rl")
    cls = getattr(old_home, name)
    assert (
        cls is getattr(rl_sac, name, None)
        or cls is getattr(rl_core, name, None)
        or (cls.__module__ == "swan_policy.train.rl")
    )


def test_features_extractor_normalises_pixels_as_configured() -> None:
    """The RL trunk reads ``encoder.input_norm``: with "image" a dimmed image gives the
    same features (up to uint8 rounding), with "fixed" it does not."""
    from gymnasium import spaces

    from swan_policy.train.rl_core import SwanFeaturesExtractor

    space = spaces.Dict(
        {
            PIXELS: spaces.Box(0, 255, (16, 16, 3), np.uint8),
            PROPRIO: spaces.Box(-1.0, 1.0, (3,), np.float32),
        }
    )
    g = torch.Generator().manual_seed(0)
    bright = torch.randint(0, 128, (2, 16, 16, 3), generator=g, dtype=torch.uint8) * 2
    obs = {PROPRIO: torch.zeros(2, 3)}
    feats = {}
    for norm in ("fixed", "image"):
        torch.manual_seed(0)
        enc = {"channels": [4, 4], "strides": [2, 1], "input_norm": norm}
        ext = SwanFeaturesExtractor(space, enc, gate={"enabled": False})
        with torch.no_grad():
            feats[norm] = [ext({**obs, PIXELS: px}) for px in (bright, bright // 2)]
    torch.testing.assert_close(*feats["image"], atol=1e-3, rtol=0)
    assert not torch.allclose(*feats["fixed"], atol=1e-3)

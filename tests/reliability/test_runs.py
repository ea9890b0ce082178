"""Seeds, registered envs, user input at the CLI, long loops (RELIABILITY.md rows 9, 10,
14 and 16)."""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import swan_envs
from swan_policy.cli import main
from swan_policy.config import EnvConfig
from swan_policy.envs import make_env
from swan_policy.policy import SwanPolicy
from swan_policy.train.checkpoint import latest_checkpoint
from tests.conftest import random_obs, tiny_config
from tests.reliability._runs import CONFIG, tiny_train


# --------------------------------------------------------------------------- row 9
def _rollout(policy: SwanPolicy, seed: int, steps: int = 12) -> tuple[np.ndarray, list[float]]:
    env = make_env(EnvConfig(id="swan_envs/Reach-v0", kwargs={"width": 16, "height": 16}))
    obs, _ = env.reset(seed=seed)
    actions, rewards = [], []
    for _ in range(steps):
        action = policy.act(obs, 0.5)
        obs, reward, *_ = env.step(action)
        actions.append(action)
        rewards.append(float(reward))
    env.close()
    return np.stack(actions), rewards


def test_row9_same_seed_same_training_and_rollout_other_seed_differs(
    reference_run: Path, demos16: Path, tmp_path: Path
) -> None:
    """Row 9: a second seed-0 run gives bit-identical weights, and a seeded rollout
    with it identical actions and rewards; seed 1 gives other weights and actions."""

    def trained(seed: int) -> SwanPolicy:
        run = tmp_path / f"seed{seed}"
        argv = [*tiny_train(demos16, f"seed={seed}"), "--run-dir", str(run), "--quiet"]
        assert main(argv) == 0
        last = latest_checkpoint(run)
        assert last is not None
        return SwanPolicy.from_pretrained(last).eval()

    last = latest_checkpoint(reference_run)
    assert last is not None
    first, again, other = SwanPolicy.from_pretrained(last).eval(), trained(0), trained(1)
    for (k, x), y in zip(first.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    a_first, r_first = _rollout(first, seed=7)
    a_again, r_again = _rollout(again, seed=7)
    np.testing.assert_array_equal(a_first, a_again)
    assert r_first == r_again
    assert any(
        not torch.equal(x, y)
        for x, y in zip(first.state_dict().values(), other.state_dict().values(), strict=True)
    )
    a_other, r_other = _rollout(other, seed=7)
    assert not np.array_equal(a_first, a_other) and r_first != r_other


# --------------------------------------------------------------------------- row 10
def test_row10_every_registered_swan_env_is_checked() -> None:
    """Row 10: the env checks in tests/envs run over swan_envs.ENV_IDS; every id the
    package registers must be in that list (none escapes the checkers)."""
    registered = sorted(k for k in gym.registry if k.startswith("swan_envs/"))
    assert registered == sorted(swan_envs.ENV_IDS)


def test_row10_state_env_wrapper_passes_both_checkers_and_is_seeded() -> None:
    """Row 10 for the env swan_policy itself wraps: a flat-Box gymnasium env as
    ``{"proprio"}`` (make_env) passes gymnasium's and SB3's checkers with only the
    warnings every MuJoCo env gives, and seeded rollouts repeat."""
    expected = (
        # an unbounded proprio Box, as in every gymnasium MuJoCo env
        "observation space minimum value is -infinity",
        "maximum value is infinity",
        # InvertedPendulum-v5's own action space is [-3, 3] (SB3 recommends [-1, 1])
        "we recommend using a symmetric and normalized space",  # gymnasium's wording
        "recommend you to use a symmetric and normalized Box action space",  # SB3's
    )
    env = make_env(EnvConfig(id="InvertedPendulum-v5"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped, skip_render_check=True)  # gymnasium: the env it wraps
        sb3_check_env(env, warn=True)  # SB3: the dict env swan_policy trains on
    unexpected = [str(w.message) for w in caught if not any(e in str(w.message) for e in expected)]
    assert unexpected == []

    def rollout(seed: int) -> list[Any]:
        obs, _ = env.reset(seed=seed)
        out: list[Any] = [obs["proprio"]]
        for a in np.random.default_rng(0).uniform(-1, 1, (5, 1)).astype(np.float32):
            obs, reward, *_ = env.step(a)
            out += [obs["proprio"], reward]
        return out

    same = zip(rollout(3), rollout(3), strict=True)
    assert all(np.array_equal(x, y) for x, y in same)
    assert not all(np.array_equal(x, y) for x, y in zip(rollout(3), rollout(4), strict=True))
    env.close()


# --------------------------------------------------------------------------- row 14
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["bc.foo=1"], "error: bc.foo: Extra inputs are not permitted"),
        (["bc.steps=abc"], "error: bc.steps: Input should be a valid integer"),
        (["bc.lr=0"], "error: bc.lr: Input should be greater than 0 (got 0)"),
        (["eval.budgets=[1.5]"], "error: eval.budgets: Value error, budgets must be"),
        (["seed=[1,"], "error: override seed: cannot parse value '[1,': expected"),
        (["method=ppo2"], "error: method: Input should be 'bc', 'dagger'"),
        (["bc.steps"], "error: override 'bc.steps': expected key=value"),
        (["policy.gate=1", "policy.gate.tau=2"], "error: override policy.gate.tau: 'gate' is"),
    ],
)
def test_row14_bad_train_input_is_one_line_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str], message: str
) -> None:
    """Row 14: one `error:` line on stderr naming the field, exit 2, and nothing on
    disk: no run directory, no demo file."""
    argv = ["train", "--config", CONFIG, "--set", f"demos.path={tmp_path / 'demos.hdf5'}"]
    argv += [a for s in sets for a in ("--set", s)]
    assert main([*argv, "--run-dir", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--config", "{tmp}/missing.yaml"], "error: cannot read config"),
        (["train", "--config", "{tmp}/bad.yaml"], "error: {tmp}/bad.yaml: invalid YAML"),
        (["train", "--config", CONFIG, "--bogus"], "error: No such option: --bogus"),
        (["export", "--run", "{tmp}/nope", "--out", "{tmp}/bundle"], "error: --run: {tmp}/nope"),
        (
            ["deploy", "--bundle", "{tmp}/nope", "--task", "swan_envs/Reach-v0"],
            "error: {tmp}/nope: not a bundle directory",
        ),
        (
            ["eval", "--run", "{tmp}/nope", "--budgets", "0,1"],
            "error: --budgets: each budget must be in (0, 1]",
        ),
    ],
)
def test_row14_bad_paths_and_flags_are_one_line_and_create_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Row 14 across verbs: a missing/bad file or flag names itself; nothing written.
    (capfd: `swan deploy` reports from its torch-free subprocess.)"""
    (tmp_path / "bad.yaml").write_text("policy: [\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    tmp = str(tmp_path)
    assert main([a.replace("{tmp}", tmp) for a in argv]) == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message.replace("{tmp}", tmp)), captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --------------------------------------------------------------------------- row 16
def test_row16_policy_act_memory_is_flat_over_a_long_loop() -> None:
    """Row 16, torch side: act() in eval mode (statistics on) allocates nothing that
    stays -- per-step bookkeeping lives in fixed-size buffers."""
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config()).eval()
    obs = {k: v[0].numpy() for k, v in random_obs(policy.config, 1).items()}
    for i in range(60):  # warm-up: caches, lazily built masks
        policy.act(obs, (1.0, 0.5, 0.25)[i % 3])
    sizes = {k: g.active_count.numel() for k, g in policy.gates().items()}
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        for i in range(400):
            policy.act(obs, (1.0, 0.5, 0.25)[i % 3])
        policy.gate_stats()
        now, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 24 KiB over 400 steps: a leak of even one small array per step would show
    assert now - base < 24 * 1024, f"grew by {now - base} bytes over 400 steps"
    assert {k: g.active_count.numel() for k, g in policy.gates().items()} == sizes
    assert policy.gate_stats()["samples"] == 460

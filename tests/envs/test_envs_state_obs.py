"""Privileged state observations (``obs_mode="state"``) for state-based RL teachers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import swan_envs  # noqa: F401  (registers the envs)
from swan_envs._base import PROPRIO


def test_reach_state_mode_passes_check_env_and_matches_pixel_mode() -> None:
    state_env = gym.make("swan_envs/Reach-v0", obs_mode="state")
    pixel_env = gym.make("swan_envs/Reach-v0", width=16, height=16)
    check_env(state_env.unwrapped, skip_render_check=True)
    assert isinstance(state_env.observation_space, gym.spaces.Dict)
    assert set(state_env.observation_space.spaces) == {PROPRIO}
    s_obs, _ = state_env.reset(seed=3)
    p_obs, _ = pixel_env.reset(seed=3)
    action = np.array([0.5, -0.3], dtype=np.float32)
    for _ in range(3):
        s_obs, s_rew, *_ = state_env.step(action)
        p_obs, p_rew, *_ = pixel_env.step(action)
    # same dynamics; the state is proprio + target + target - fingertip
    assert s_rew == p_rew and s_obs[PROPRIO].shape == (10,)
    np.testing.assert_array_equal(s_obs[PROPRIO][:6], p_obs[PROPRIO])
    priv = pixel_env.unwrapped.state_observation()  # type: ignore[attr-defined]  # ReachEnv's
    np.testing.assert_array_equal(priv[PROPRIO], s_obs[PROPRIO])
    target, to_target = s_obs[PROPRIO][6:8], s_obs[PROPRIO][8:]
    assert np.linalg.norm(target) > 0.05 and not np.allclose(to_target, 0.0)
    state_env.close()
    pixel_env.close()


def test_bad_obs_mode_and_tasks_without_state_mode_fail() -> None:
    with pytest.raises(ValueError, match="obs_mode must be one of"):
        gym.make("swan_envs/Reach-v0", obs_mode="rgb")
    with pytest.raises(ValueError, match="obs_mode='state' is not available for PushEnv"):
        gym.make("swan_envs/Push-v0", obs_mode="state")

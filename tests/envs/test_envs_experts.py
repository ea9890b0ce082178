"""Scripted experts: success on a few seeded episodes, phases, episode resets."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import swan_envs
from swan_envs.experts import Expert, make_expert


def _run(env: gym.Env[Any, Any], expert: Expert, seed: int) -> tuple[bool, list[str]]:
    obs, info = env.reset(seed=seed)
    phases: list[str] = []
    done = False
    while not done:
        action = expert(obs)
        assert action.dtype == np.float32 and env.action_space.contains(action)
        if not phases or phases[-1] != expert.phase:
            phases.append(expert.phase)
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
    return bool(info["is_success"]), phases


@pytest.mark.parametrize("env_id", swan_envs.ENV_IDS)
def test_expert_succeeds_on_seeded_episodes(env_id: str) -> None:
    env = gym.make(env_id, width=32, height=32)
    expert = make_expert(env)
    results = [_run(env, expert, seed)[0] for seed in range(3)]
    assert results == [True, True, True]
    env.close()


@pytest.mark.parametrize("env_id", swan_envs.TASK_IDS)
def test_expert_succeeds_under_hard_variation(env_id: str) -> None:
    env = gym.make(env_id, width=32, height=32, variation="hard")
    expert = make_expert(env)
    assert [_run(env, expert, seed)[0] for seed in (10, 11)] == [True, True]
    env.close()


def test_pick_place_phases_run_in_order_and_reset_with_the_episode() -> None:
    env = gym.make("swan_envs/PickPlace-v0", width=32, height=32)
    expert = make_expert(env)
    ok, phases = _run(env, expert, seed=0)
    assert ok and phases == ["reach", "grasp", "carry", "place"]
    # A new episode: the expert notices the step counter went back and starts over.
    obs, _ = env.reset(seed=1)
    expert(obs)
    assert expert.phase == "reach"


def test_push_expert_phases() -> None:
    env = gym.make("swan_envs/Push-v0", width=32, height=32)
    ok, phases = _run(env, make_expert(env), seed=2)
    assert ok and phases[-1] == "push" and set(phases) <= {"approach", "push"}


def test_make_expert_refuses_unknown_envs() -> None:
    with pytest.raises(ValueError, match="no scripted expert for CartPoleEnv"):
        make_expert(gym.make("CartPole-v1"))

"""The swan_envs tasks: env checkers, seeding, bad actions, variation, rendering, registration."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import swan_envs
from swan_envs._base import PIXELS, PROPRIO
from swan_envs.pixels import PixelObservationWrapper

# Warnings the checkers always give for these envs, and why they are fine:
EXPECTED_WARNINGS = (
    # proprio is an unbounded Box, as in every gymnasium MuJoCo env
    "A Box observation space minimum value is -infinity",
    "A Box observation space maximum value is infinity",
    # the pixel ids are a wrapper around gymnasium's own MuJoCo envs; the wrapper is checked
    "is different from the unwrapped version",
)


def _checked_env(env_id: str) -> gym.Env[Any, Any]:
    """What the checkers see: the raw task, or the pixel wrapper for the pixel ids."""
    env = gym.make(env_id)
    layer: Any = env
    while not isinstance(layer, PixelObservationWrapper) and layer is not env.unwrapped:
        layer = layer.env
    return layer


@pytest.fixture
def reach() -> Iterator[gym.Env[Any, Any]]:
    env = gym.make("swan_envs/Reach-v0")
    yield env
    env.close()


@pytest.mark.parametrize("env_id", swan_envs.ENV_IDS)
def test_env_checkers_pass_without_unexpected_warnings(env_id: str) -> None:
    env = _checked_env(env_id)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
        sb3_check_env(env, warn=True)
    unexpected = [
        str(w.message) for w in caught if not any(e in str(w.message) for e in EXPECTED_WARNINGS)
    ]
    assert unexpected == []
    env.close()


def _rollout(
    env_id: str, seed: int, steps: int = 8, **kwargs: Any
) -> tuple[list[np.ndarray], list[Any]]:
    """(images, proprio and rewards) of a seeded rollout with fixed random actions."""
    env = gym.make(env_id, **kwargs)
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(123).uniform(-1, 1, size=(steps, *env.action_space.shape))
    images, state = [obs[PIXELS]], [obs[PROPRIO]]
    for action in actions:
        obs, reward, *_ = env.step(action.astype(np.float32))
        images.append(obs[PIXELS])
        state += [obs[PROPRIO], reward]
    env.close()
    return images, state


def _same(a: list[Any], b: list[Any]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("env_id", swan_envs.ENV_IDS)
def test_same_seed_same_rollout_and_other_seed_differs(env_id: str) -> None:
    images, state = _rollout(env_id, seed=3)
    again_images, again_state = _rollout(env_id, seed=3)
    assert _same(images, again_images) and _same(state, again_state)
    other_images, other_state = _rollout(env_id, seed=4)
    assert not _same(images, other_images) and not _same(state, other_state)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros(3, dtype=np.float32), r"shape \(2,\), got shape \(3,\)"),
        (0.5, r"shape \(2,\), got shape \(\)"),
        (np.zeros((1, 2), dtype=np.float32), r"got shape \(1, 2\)"),
        (np.array([np.nan, 0.0], dtype=np.float32), "must be finite"),
        (np.array([0.0, np.inf], dtype=np.float32), "must be finite"),
        ("left", "numeric array"),
    ],
)
def test_bad_actions_raise_and_never_reach_mujoco(
    reach: gym.Env[Any, Any], action: Any, message: str
) -> None:
    reach.reset(seed=0)
    sim: Any = reach.unwrapped
    before = (sim.data.time, sim.data.qpos.copy(), sim.data.ctrl.copy())
    with pytest.raises(ValueError, match=message):
        sim.step(action)
    assert sim.data.time == before[0]
    assert np.array_equal(sim.data.qpos, before[1]) and np.array_equal(sim.data.ctrl, before[2])


def test_out_of_range_actions_are_clipped() -> None:
    big = _rollout_with_action(np.array([5.0, -7.0], dtype=np.float32))
    unit = _rollout_with_action(np.array([1.0, -1.0], dtype=np.float32))
    assert _same(big, unit)


def _rollout_with_action(action: np.ndarray) -> list[np.ndarray]:
    env = gym.make("swan_envs/Reach-v0")
    env.reset(seed=1)
    out = [env.step(action)[0][PROPRIO] for _ in range(3)]
    env.close()
    return out


@pytest.mark.parametrize("env_id", swan_envs.TASK_IDS)
def test_hard_variation_changes_pixels_not_dynamics(env_id: str) -> None:
    plain_images, plain_state = _rollout(env_id, seed=5)
    hard_images, hard_state = _rollout(env_id, seed=5, variation="hard")
    assert not any(np.array_equal(a, b) for a, b in zip(plain_images, hard_images, strict=True))
    assert _same(plain_state, hard_state)


@pytest.mark.parametrize("variation", ["appearance", "distractors"])
def test_partial_variations_change_pixels_not_dynamics(variation: str) -> None:
    plain_images, plain_state = _rollout("swan_envs/PickPlace-v0", seed=5)
    images, state = _rollout("swan_envs/PickPlace-v0", seed=5, variation=variation)
    assert not any(np.array_equal(a, b) for a, b in zip(plain_images, images, strict=True))
    assert _same(plain_state, state)


@pytest.mark.parametrize("seed", [0, 3])
def test_appearance_and_distractors_are_the_halves_of_hard(seed: int) -> None:
    """ "appearance" is "hard" without its distractors; "distractors" leaves the looks alone."""
    visuals = {}
    for variation in ("none", *swan_envs.VARIATIONS):
        env = gym.make("swan_envs/PickPlace-v0", variation=variation, width=16, height=16)
        env.reset(seed=seed)
        task: Any = env.unwrapped  # a swan_envs task: its model and geom names
        m, ids = task.model, task._geom_ids
        recoloured = [ids[n] for n in task.recolour_geoms]
        shown = [ids[n] for n in task.distractor_geoms]
        visuals[variation] = (
            m.geom_rgba[recoloured].copy(),
            m.cam_pos.copy(),
            m.geom_rgba[shown, 3].copy(),
        )
        env.close()
    colours = {k: v[0] for k, v in visuals.items()}
    cameras = {k: v[1] for k, v in visuals.items()}
    alphas = {k: v[2] for k, v in visuals.items()}
    assert not alphas["appearance"].any() and not alphas["none"].any()
    assert alphas["distractors"][0] == 1.0 and alphas["hard"][0] == 1.0
    np.testing.assert_array_equal(colours["appearance"], colours["hard"])
    np.testing.assert_array_equal(cameras["appearance"], cameras["hard"])
    assert not np.array_equal(colours["appearance"], colours["none"])
    np.testing.assert_array_equal(colours["distractors"], colours["none"])
    np.testing.assert_array_equal(cameras["distractors"], cameras["none"])


def test_hard_variation_differs_between_seeds_and_does_not_leak() -> None:
    hard = gym.make("swan_envs/Push-v0", variation="hard")
    a, b = hard.reset(seed=0)[0][PIXELS], hard.reset(seed=1)[0][PIXELS]
    assert not np.array_equal(a, b)
    # The model's visuals are restored at every reset: resetting to seed 0 again gives a.
    assert np.array_equal(hard.reset(seed=0)[0][PIXELS], a)
    hard.close()


@pytest.mark.parametrize("env_id", swan_envs.TASK_IDS)
def test_spaces_and_info(env_id: str) -> None:
    env = gym.make(env_id, width=48, height=32)
    obs, info = env.reset(seed=0)
    assert obs[PIXELS].shape == (32, 48, 3) and obs[PIXELS].dtype == np.uint8
    assert obs[PROPRIO].dtype == np.float32
    assert env.action_space == gym.spaces.Box(-1, 1, env.action_space.shape, np.float32)
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert isinstance(info["is_success"], bool) and isinstance(reward, float)
    assert env.spec is not None and env.spec.max_episode_steps in (50, 100, 150)
    env.close()


@pytest.mark.parametrize("env_id", swan_envs.ENV_IDS)
def test_render_rgb_array(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.shape == (256, 256, 3) and frame.std() > 0
    env.close()


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="variation must be one of"):
        gym.make("swan_envs/Reach-v0", variation="extreme")
    with pytest.raises(ValueError, match="width must be an int >= 8"):
        gym.make("swan_envs/Reach-v0", width=2)


def test_import_is_cheap_and_sets_headless_rendering() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY")}
    code = (
        "import os, sys, swan_envs; assert 'mujoco' not in sys.modules; "
        "assert os.environ['MUJOCO_GL'] == 'egl'; import gymnasium as gym; "
        "e = gym.make('swan_envs/Reach-v0'); print(e.reset(seed=0)[0]['pixels'].std() > 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"

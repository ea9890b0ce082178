"""The pixel wrapper: dict observations, frame stacking, proprio choice, action scaling."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv
from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

import swan_envs  # noqa: F401  (registers the ids)
from swan_envs._base import PIXELS, PROPRIO
from swan_envs.pixels import PixelObservationWrapper


def test_pixel_reacher_hides_the_target_from_proprio() -> None:
    reacher = ReacherEnv()
    env = PixelObservationWrapper(reacher, width=32, height=32)
    obs, info = env.reset(seed=0)
    assert obs[PIXELS].shape == (32, 32, 3) and obs[PIXELS].dtype == np.uint8
    assert obs[PROPRIO].shape == (6,) and obs[PROPRIO].dtype == np.float32
    state = reacher._get_obs()
    # cos, sin of both joints and their velocities; target x, y (4, 5) and the fingertip-target
    # vector (8, 9, 10) are only in the image.
    np.testing.assert_allclose(obs[PROPRIO], state[[0, 1, 2, 3, 6, 7]].astype(np.float32))
    assert isinstance(info["is_success"], bool)


def test_frame_stack_is_channel_stacked_newest_last() -> None:
    env = gym.make("swan_envs/PixelInvertedPendulum-v1", width=32, height=32, frame_stack=3)
    obs, _ = env.reset(seed=0)
    assert obs[PIXELS].shape == (32, 32, 9)
    frames = np.split(obs[PIXELS], 3, axis=-1)
    assert all(np.array_equal(frames[0], f) for f in frames)  # reset repeats the first frame
    previous = obs[PIXELS]
    for _ in range(3):
        obs, *_ = env.step(np.array([1.0], dtype=np.float32))
        # the frames shift left by one; the newest sits in the last 3 channels
        assert np.array_equal(obs[PIXELS][..., :6], previous[..., 3:])
        assert not np.array_equal(obs[PIXELS][..., 6:], previous[..., 6:])
        previous = obs[PIXELS]
    assert obs[PROPRIO].shape == (2,)  # cart position and velocity; the pole is seen
    env.close()


def test_actions_are_normalised_to_unit_box() -> None:
    pendulum = InvertedPendulumEnv()
    env = PixelObservationWrapper(pendulum, width=16, height=16)
    assert env.action_space == gym.spaces.Box(-1, 1, (1,), np.float32)
    env.reset(seed=0)
    env.step(np.array([1.0], dtype=np.float32))
    assert pendulum.data.ctrl[0] == pytest.approx(3.0)
    env.step(np.array([-0.5], dtype=np.float32))
    assert pendulum.data.ctrl[0] == pytest.approx(-1.5)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros(2, dtype=np.float32), r"shape \(1,\), got shape \(2,\)"),
        (np.array([np.nan], dtype=np.float32), "must be finite"),
    ],
)
def test_pixel_wrapper_rejects_bad_actions(action: Any, message: str) -> None:
    pendulum = InvertedPendulumEnv()
    env = PixelObservationWrapper(pendulum, width=16, height=16)
    env.reset(seed=0)
    time_before = pendulum.data.time
    with pytest.raises(ValueError, match=message):
        env.step(action)
    assert pendulum.data.time == time_before


def test_wraps_a_gym_make_env_and_refuses_non_mujoco_envs() -> None:
    env = PixelObservationWrapper(gym.make("Reacher-v5"), width=16, height=16, frame_stack=2)
    obs, _ = env.reset(seed=1)
    assert obs[PIXELS].shape == (16, 16, 6)
    with pytest.raises(ValueError, match="not a MuJoCo env"):
        PixelObservationWrapper(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="frame_stack must be an int >= 1"):
        PixelObservationWrapper(ReacherEnv(), frame_stack=0)
    with pytest.raises(ValueError, match="out of range"):
        PixelObservationWrapper(ReacherEnv(), proprio_indices=[0, 99])


def test_target_is_visible_in_pixel_reacher() -> None:
    # Same arm state, target moved: the image changes (the target is a visible dot).
    env = PixelObservationWrapper(ReacherEnv(), width=64, height=64)
    env.reset(seed=0)
    base: Any = env.unwrapped
    qpos, qvel = base.data.qpos.copy(), base.data.qvel.copy()
    qpos[2:] = [0.15, 0.0]
    base.set_state(qpos, qvel)
    moved = env.step(np.zeros(2, dtype=np.float32))[0]
    qpos[2:] = [-0.15, 0.0]
    base.set_state(qpos, base.data.qvel.copy())
    moved_again = env.step(np.zeros(2, dtype=np.float32))[0]
    assert np.abs(moved[PIXELS].astype(int) - moved_again[PIXELS].astype(int)).sum() > 0


@pytest.mark.parametrize("env_cls", [InvertedPendulumEnv, ReacherEnv])
def test_frame_and_success_see_the_current_state(env_cls: Any) -> None:
    # gymnasium's do_simulation ends on mj_step, which leaves xpos one substep behind qpos:
    # the wrapper must render (and test success on) positions recomputed from the state.
    import mujoco

    env = PixelObservationWrapper(env_cls(), width=32, height=32, frame_stack=1)
    env.reset(seed=0)
    base: Any = env.unwrapped
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
    fresh = mujoco.MjData(base.model)
    fresh.qpos[:], fresh.qvel[:] = base.data.qpos, base.data.qvel
    mujoco.mj_forward(base.model, fresh)
    np.testing.assert_array_equal(base.data.xpos, fresh.xpos)  # what was rendered
    mujoco.mj_forward(base.model, base.data)  # a frame rendered after an explicit forward
    np.testing.assert_array_equal(obs[PIXELS], env._frame(env._renderer))
    if env_cls is ReacherEnv:
        gap = fresh.body("fingertip").xpos - fresh.body("target").xpos
        assert info["is_success"] == bool(np.linalg.norm(gap[:2]) < 0.02)
    env.close()


def test_v0_keeps_its_frames_and_v1_sees_the_current_state() -> None:
    """A released env's observations never change: -v0 still renders one physics substep
    behind the state, -v1 is the fixed env (same dynamics, same proprio)."""
    v0 = gym.make("swan_envs/PixelInvertedPendulum-v0", width=32, height=32, frame_stack=1)
    v1 = gym.make("swan_envs/PixelInvertedPendulum-v1", width=32, height=32, frame_stack=1)
    assert v0.unwrapped is not None
    assert not v0.get_wrapper_attr("sync_state") and v1.get_wrapper_attr("sync_state")
    o0, _ = v0.reset(seed=0)
    o1, _ = v1.reset(seed=0)
    differs = False
    for _ in range(5):
        a = np.array([1.0], dtype=np.float32)
        o0, *_ = v0.step(a)
        o1, *_ = v1.step(a)
        np.testing.assert_array_equal(o0[PROPRIO], o1[PROPRIO])  # the same dynamics
        differs |= not np.array_equal(o0[PIXELS], o1[PIXELS])
    assert differs  # the cart moves: the frames one substep apart differ
    v0.close()
    v1.close()

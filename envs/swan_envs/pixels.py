"""Turn a standard gymnasium MuJoCo env into swan's dict observation, with frame stacking.

``PixelObservationWrapper(env)`` renders ``env``'s MuJoCo scene with its own small offscreen
renderer (no shadows, reflections or skybox, so it stays cheap) and returns

* ``"pixels"``: ``(height, width, 3 * frame_stack)`` uint8, the last ``frame_stack`` frames
  stacked along the channel axis, newest last;
* ``"proprio"``: float32, the env's state observation minus what is only visible.

What goes in ``proprio`` (and the camera) is chosen per env:

* ``InvertedPendulum-v5``: proprio = [cart position, cart velocity] (the robot's own joint);
  the pole angle and its rate must be read from the pixels (hence ``frame_stack=3`` by
  default). The camera looks at the cart from the side and follows it along the rail.
* ``Reacher-v5``: proprio = [cos q0, cos q1, sin q0, sin q1, dq0, dq1]; the target position and
  the fingertip-target vector are removed, so the target must be seen. Top-down camera
  (distance 0.6 m, elevation -90 deg): the target is a clear red dot.
* any other MuJoCo env: the full state observation, a camera framing the whole model.

Actions are rescaled to ``Box(-1, 1)`` (``normalize_actions=True``) and checked like the
swan_envs tasks: a wrong shape or NaN/Inf raises ``ValueError`` before MuJoCo sees it.
``info["is_success"]`` is added for the two envs above: pendulum = still upright (so it is
True at the end exactly when the pole survived the whole episode); Reacher = fingertip within
2 cm of the target.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from swan_envs._base import PIXELS, PROPRIO, ObsDict, check_action, make_renderer

REACHER_SUCCESS_RADIUS = 0.02


@dataclass(frozen=True)
class PixelSpec:
    """How one gymnasium env is seen: proprio indices, camera, success test."""

    proprio_indices: tuple[int, ...] | None = None
    distance: float | None = None
    azimuth: float = 90.0
    elevation: float = -45.0
    lookat: tuple[float, float, float] | None = None
    # qpos index whose value the camera's lookat x follows (a camera riding with the cart).
    track_qpos_x: int | None = None
    frame_stack: int = 1


SPECS: dict[str, PixelSpec] = {
    "InvertedPendulumEnv": PixelSpec(
        proprio_indices=(0, 2),
        distance=1.6,
        azimuth=90.0,
        elevation=0.0,
        lookat=(0.0, 0.0, 0.25),
        track_qpos_x=0,
        frame_stack=3,
    ),
    "ReacherEnv": PixelSpec(
        proprio_indices=(0, 1, 2, 3, 6, 7),
        distance=0.6,
        azimuth=90.0,
        elevation=-90.0,
        lookat=(0.0, 0.0, 0.0),
    ),
}


def _success(base: Any, terminated: bool) -> bool | None:
    name = type(base).__name__
    if name == "InvertedPendulumEnv":
        return not terminated
    if name == "ReacherEnv":
        gap = base.data.body("fingertip").xpos - base.data.body("target").xpos
        return bool(np.linalg.norm(gap[:2]) < REACHER_SUCCESS_RADIUS)
    return None


class PixelObservationWrapper(gym.Wrapper[ObsDict, np.ndarray, Any, Any]):
    """Dict observation ``{"pixels", "proprio"}`` with frame stacking for a gymnasium MuJoCo env.

    Args:
        env: an env whose ``unwrapped`` has MuJoCo ``model`` and ``data`` (gymnasium's
            ``MujocoEnv``), e.g. ``InvertedPendulumEnv()`` or ``gymnasium.make("Reacher-v5")``.
        width: image width in pixels.
        height: image height in pixels.
        frame_stack: number of frames stacked along the channel axis (newest last); ``None``
            uses the env's default (3 for InvertedPendulum, else 1).
        proprio_indices: indices of the state observation kept in ``proprio``; ``None`` uses
            the env's default (see the module docstring).
        normalize_actions: expose ``Box(-1, 1)`` actions and rescale them to the env's bounds.
        render_mode: ``"rgb_array"`` makes ``render()`` return the camera image at
            ``render_size`` x ``render_size``.
        render_size: side of the ``render()`` image.
        sync_state: recompute positions from the state (``mj_forward``) after each reset
            and step, before the frame is rendered and success is tested (``-v1``);
            ``False`` renders what gymnasium's last physics substep left, one substep
            behind (``-v0``).

    ## Version History
    * v1: the frame and Reacher's success see the current state (``sync_state``).
    * v0: initial release (issue 3); frames one physics substep behind the state.

    Raises:
        ValueError: the env is not a MuJoCo env, its observation is not a flat Box, or an
            argument is out of range.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        width: int = 64,
        height: int = 64,
        frame_stack: int | None = None,
        proprio_indices: tuple[int, ...] | list[int] | None = None,
        normalize_actions: bool = True,
        render_mode: str | None = None,
        render_size: int = 256,
        sync_state: bool = True,
    ) -> None:
        super().__init__(env)
        self.sync_state = bool(sync_state)
        base: Any = env.unwrapped
        if not isinstance(getattr(base, "model", None), mujoco.MjModel):
            raise ValueError(f"{type(base).__name__} is not a MuJoCo env (no MjModel at .model)")
        inner_obs = env.observation_space
        if not isinstance(inner_obs, spaces.Box) or len(inner_obs.shape) != 1:
            raise ValueError(f"expected a flat Box observation space, got {inner_obs}")
        if not isinstance(env.action_space, spaces.Box):
            raise ValueError(f"expected a Box action space, got {env.action_space}")
        self.spec_ = SPECS.get(type(base).__name__, PixelSpec())
        k = self.spec_.frame_stack if frame_stack is None else frame_stack
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"frame_stack must be an int >= 1, got {frame_stack!r}")
        indices = proprio_indices if proprio_indices is not None else self.spec_.proprio_indices
        self.proprio_indices = (
            np.arange(inner_obs.shape[0]) if indices is None else np.array(indices)
        )
        if self.proprio_indices.size and (
            self.proprio_indices.min() < 0 or self.proprio_indices.max() >= inner_obs.shape[0]
        ):
            raise ValueError(
                f"proprio_indices {indices} out of range for an observation of size "
                f"{inner_obs.shape[0]}"
            )
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        # Only "rgb_array" is offered: the wrapper renders with its own camera.
        fps = env.metadata.get("render_fps", int(round(1.0 / float(getattr(base, "dt", 0.05)))))
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": fps}
        self.frame_stack = k
        self.normalize_actions = normalize_actions
        self._render_mode = render_mode
        self._render_size = render_size

        self._model: mujoco.MjModel = base.model
        self._data: mujoco.MjData = base.data
        # Coarser tessellation of round geoms: a visual-only setting, the dynamics are untouched.
        self._model.vis.quality.numslices = 12
        self._model.vis.quality.numstacks = 4
        self._renderer = make_renderer(self._model, height, width)
        self._big_renderer: mujoco.Renderer | None = None
        self._camera = self._make_camera()
        self._frames: deque[np.ndarray] = deque(maxlen=k)

        self.observation_space = spaces.Dict(  # type: ignore[assignment]  # Space[dict[str, Any]]
            {
                PIXELS: spaces.Box(0, 255, shape=(height, width, 3 * k), dtype=np.uint8),
                PROPRIO: spaces.Box(
                    -np.inf, np.inf, shape=(len(self.proprio_indices),), dtype=np.float32
                ),
            }
        )
        self._inner_low = np.asarray(env.action_space.low, dtype=np.float64)
        self._inner_high = np.asarray(env.action_space.high, dtype=np.float64)
        if normalize_actions:
            if not (np.all(np.isfinite(self._inner_low)) and np.all(np.isfinite(self._inner_high))):
                raise ValueError("normalize_actions needs finite action bounds")
            self.action_space = spaces.Box(
                -1.0, 1.0, shape=env.action_space.shape, dtype=np.float32
            )

    @property
    def render_mode(self) -> str | None:  # type: ignore[override]  # gym: a plain attribute
        return self._render_mode

    def _make_camera(self) -> mujoco.MjvCamera:
        cam = mujoco.MjvCamera()
        cam.type = mujoco.mjtCamera.mjCAMERA_FREE
        stat = self._model.stat
        cam.distance = self.spec_.distance or float(stat.extent) * 2.0
        cam.azimuth, cam.elevation = self.spec_.azimuth, self.spec_.elevation
        cam.lookat[:] = self.spec_.lookat if self.spec_.lookat is not None else stat.center
        return cam

    def _frame(self, renderer: mujoco.Renderer) -> np.ndarray:
        if self.spec_.track_qpos_x is not None:
            self._camera.lookat[0] = self._data.qpos[self.spec_.track_qpos_x]
        renderer.update_scene(self._data, camera=self._camera)
        return renderer.render()

    def _observation(self, state: Any) -> ObsDict:
        pixels = np.concatenate(list(self._frames), axis=-1)
        proprio = np.asarray(state, dtype=np.float32)[self.proprio_indices]
        return {PIXELS: pixels, PROPRIO: proprio}

    def to_env_action(self, action: Any) -> np.ndarray:
        """Check an action (shape, finite) and map it to the wrapped env's action units."""
        if not self.normalize_actions:
            act = check_action(action, self._inner_low.shape, self._inner_low, self._inner_high)
            return act.astype(self.env.action_space.dtype)
        act = check_action(action, self._inner_low.shape)
        raw = self._inner_low + (act + 1.0) * 0.5 * (self._inner_high - self._inner_low)
        return raw.astype(self.env.action_space.dtype)

    def _sync(self) -> None:
        """Recompute positions from ``qpos`` before rendering or reading them.

        gymnasium's ``do_simulation`` ends on ``mj_step``, which leaves ``xpos`` and the
        other derived quantities one physics substep behind ``qpos`` (they were computed at
        the substep's start). ``mj_forward`` reads only the state, and ``mj_step`` recomputes
        everything first, so the dynamics are unchanged.
        """
        if self.sync_state:
            mujoco.mj_forward(self._model, self._data)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsDict, dict[str, Any]]:
        state, info = self.env.reset(seed=seed, options=options)
        self._sync()
        frame = self._frame(self._renderer)
        for _ in range(self.frame_stack):
            self._frames.append(frame)
        success = _success(self.env.unwrapped, False)
        if success is not None:
            info["is_success"] = success
        return self._observation(state), info

    def step(self, action: Any) -> tuple[ObsDict, float, bool, bool, dict[str, Any]]:
        state, reward, terminated, truncated, info = self.env.step(self.to_env_action(action))
        self._sync()  # the frame and the success test see the state, not the last substep
        self._frames.append(self._frame(self._renderer))
        success = _success(self.env.unwrapped, bool(terminated))
        if success is not None:
            info["is_success"] = success
        return self._observation(state), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The observation camera's image at ``render_size`` (``render_mode="rgb_array"``)."""
        if self._render_mode != "rgb_array":
            return None
        if self._big_renderer is None:
            self._big_renderer = make_renderer(self._model, self._render_size, self._render_size)
        return self._frame(self._big_renderer)

    def close(self) -> None:
        self._renderer.close()
        if self._big_renderer is not None:
            self._big_renderer.close()
            self._big_renderer = None
        super().close()


def make_pixel_inverted_pendulum(
    width: int = 64,
    height: int = 64,
    frame_stack: int = 3,
    render_mode: str | None = None,
    sync_state: bool = True,
    **kwargs: Any,
) -> PixelObservationWrapper:
    """``InvertedPendulum-v5`` seen by a side camera (entry point of
    ``swan_envs/PixelInvertedPendulum-v1`` and ``-v0``; ``kwargs`` go to
    ``InvertedPendulumEnv``)."""
    from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv

    return PixelObservationWrapper(
        InvertedPendulumEnv(**kwargs),
        width=width,
        height=height,
        frame_stack=frame_stack,
        render_mode=render_mode,
        sync_state=sync_state,
    )


def make_pixel_reacher(
    width: int = 64,
    height: int = 64,
    frame_stack: int = 1,
    render_mode: str | None = None,
    sync_state: bool = True,
    **kwargs: Any,
) -> PixelObservationWrapper:
    """``Reacher-v5`` seen from above (entry point of ``swan_envs/PixelReacher-v1`` and ``-v0``;
    ``kwargs`` go to ``ReacherEnv``)."""
    from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

    return PixelObservationWrapper(
        ReacherEnv(**kwargs),
        width=width,
        height=height,
        frame_stack=frame_stack,
        render_mode=render_mode,
        sync_state=sync_state,
    )

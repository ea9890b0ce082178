"""Shared machinery of the swan_envs tasks: observation keys, action checks, rendering, variation.

Every task is a small MJCF scene seen by one fixed camera. The base class owns the model, the
offscreen renderer, the seeded visual variation and the step loop; a task only says how to
sample its initial state, how to map an action to controls, and how to score a state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from swan_envs import VARIATIONS

# The observation keys, in one place (STYLE.md 6). Everything else imports these.
PIXELS = "pixels"
PROPRIO = "proprio"

ASSETS = Path(__file__).parent / "assets"
# "state": privileged low-dimensional observations, no image (state-based RL teachers, issue 5).
OBS_MODES = ("pixels", "state")

ObsDict = dict[str, np.ndarray]


def check_action(
    action: Any,
    shape: tuple[int, ...],
    low: float | np.ndarray = -1.0,
    high: float | np.ndarray = 1.0,
) -> np.ndarray:
    """Validate an action before it can reach MuJoCo and clip it to [low, high].

    Args:
        action: what the caller passed to ``step``.
        shape: the expected action shape.
        low: lower bound(s) to clip to.
        high: upper bound(s) to clip to.

    Returns:
        A float64 copy of the action, clipped to [low, high].

    Raises:
        ValueError: the action is not numeric, has the wrong shape, or holds NaN/Inf.
    """
    try:
        arr = np.array(action, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"action must be a numeric array of shape {shape}, got {type(action).__name__}"
        ) from err
    if arr.shape != shape:
        raise ValueError(f"action must have shape {shape}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"action must be finite, got {arr.tolist()} (NaN or Inf)")
    return np.clip(arr, low, high)


def make_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    """An offscreen renderer with the costly effects (shadows, reflections) switched off."""
    # The offscreen buffer must be at least as large as the image.
    model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), width)
    model.vis.global_.offheight = max(int(model.vis.global_.offheight), height)
    renderer = mujoco.Renderer(model, height=height, width=width)
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
    renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
    return renderer


class SwanMujocoEnv(gym.Env[ObsDict, np.ndarray]):
    """Base class of the swan_envs tasks (not registered itself).

    Subclasses set the class attributes below and implement ``_sample_state``,
    ``_apply_action``, ``_proprio`` and ``_evaluate``.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 20}

    xml_file: str = ""
    frame_skip: int = 1
    proprio_dim: int = 0
    camera: str = "top"
    # Geoms whose colour is randomised under variation="hard" (the floor included).
    recolour_geoms: tuple[str, ...] = ()
    # Visual-only geoms (no collisions) shown as distractors under variation="hard".
    distractor_geoms: tuple[str, ...] = ("distractor0", "distractor1")
    # Distractors keep at least this far (m) from the points given by ``_keep_clear``.
    distractor_clearance: float = 0.08
    workspace: float = 0.22
    # Number of actions if it differs from the number of actuators (e.g. one grip command).
    action_dim: int | None = None
    # Length of ``_task_state`` (what only the image shows: targets, objects); 0 = no state mode.
    task_state_dim: int = 0

    def __init__(
        self,
        width: int = 64,
        height: int = 64,
        render_mode: str | None = None,
        variation: str = "none",
        render_width: int = 256,
        render_height: int = 256,
        obs_mode: str = "pixels",
    ) -> None:
        if variation not in VARIATIONS:
            raise ValueError(f"variation must be one of {VARIATIONS}, got {variation!r}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {OBS_MODES}, got {obs_mode!r}")
        if obs_mode == "state" and not self.task_state_dim:
            raise ValueError(f"obs_mode='state' is not available for {type(self).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, int) or value < 8:
                raise ValueError(f"{name} must be an int >= 8, got {value!r}")
        self.width, self.height = width, height
        self.render_mode = render_mode
        self.variation = variation
        self.obs_mode = obs_mode

        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / self.xml_file))
        self.data = mujoco.MjData(self.model)
        self.dt = float(self.model.opt.timestep) * self.frame_skip
        self.metadata = {**self.metadata, "render_fps": int(round(1.0 / self.dt))}

        # state mode renders nothing per step (render() for videos still works)
        self._renderer = make_renderer(self.model, height, width) if obs_mode == "pixels" else None
        self._render_size = (render_height, render_width)
        self._big_renderer: mujoco.Renderer | None = None
        self._cam_id = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera)
        self._geom_ids = {
            name: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name)
            for name in (*self.recolour_geoms, *self.distractor_geoms)
        }
        # Task state (targets) lives in data (mocap bodies), never in the model, so the model only
        # carries visuals. Their defaults are restored at every reset: a "hard" episode never
        # leaks into the next one.
        self._default_visual = {
            "geom_rgba": self.model.geom_rgba.copy(),
            "cam_pos": self.model.cam_pos.copy(),
            "light_diffuse": self.model.light_diffuse.copy(),
            "light_pos": self.model.light_pos.copy(),
        }

        n_act = int(self.model.nu) if self.action_dim is None else self.action_dim
        self.action_shape: tuple[int, ...] = (n_act,)
        self.action_space = spaces.Box(-1.0, 1.0, shape=self.action_shape, dtype=np.float32)
        if obs_mode == "state":
            n_state = self.proprio_dim + self.task_state_dim
            self.observation_space = spaces.Dict(  # type: ignore[assignment]  # Dict[str, Any]
                {PROPRIO: spaces.Box(-np.inf, np.inf, shape=(n_state,), dtype=np.float32)}
            )
        else:
            self.observation_space = spaces.Dict(  # type: ignore[assignment]  # Dict[str, Any]
                {
                    PIXELS: spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8),
                    PROPRIO: spaces.Box(
                        -np.inf, np.inf, shape=(self.proprio_dim,), dtype=np.float32
                    ),
                }
            )
        self.elapsed_steps = 0  # steps since reset; the experts use it to notice new episodes

    # ---- the task interface -------------------------------------------------------------------

    def _sample_state(self) -> None:
        """Write a random initial state into ``self.data`` (use ``self.np_random`` only)."""
        raise NotImplementedError

    def _apply_action(self, action: np.ndarray) -> None:
        """Write ``data.ctrl`` from a validated action in [-1, 1]."""
        raise NotImplementedError

    def _proprio(self) -> np.ndarray:
        """The robot's own state (never the positions of targets or objects)."""
        raise NotImplementedError

    def _evaluate(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        """Return (reward, success, extra info) for the current state."""
        raise NotImplementedError

    def _keep_clear(self) -> list[np.ndarray]:
        """Points (x, y) the distractors must not cover (targets, objects)."""
        return []

    def _task_state(self) -> np.ndarray:
        """What only the image shows (targets, objects), ``task_state_dim`` values."""
        raise NotImplementedError

    # ---- gymnasium API ------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsDict, dict[str, Any]]:
        super().reset(seed=seed)
        mujoco.mj_resetData(self.model, self.data)
        # The task state is drawn before the visual variation, so the same seed gives the same
        # dynamics under variation="none" and "hard".
        self._sample_state()
        mujoco.mj_kinematics(self.model, self.data)
        self._apply_variation()
        # After the variation: static geoms' world poses come from the model's geom_pos.
        mujoco.mj_forward(self.model, self.data)
        self.elapsed_steps = 0
        _, success, info = self._evaluate(np.zeros(self.action_shape))
        info["is_success"] = bool(success)
        return self._get_obs(), info

    def step(self, action: np.ndarray) -> tuple[ObsDict, float, bool, bool, dict[str, Any]]:
        act = check_action(action, self.action_shape)
        self._apply_action(act)
        mujoco.mj_step(self.model, self.data, nstep=self.frame_skip)
        # mj_step leaves positions one substep stale; recompute them for rendering and scoring.
        mujoco.mj_forward(self.model, self.data)
        self.elapsed_steps += 1
        reward, success, info = self._evaluate(act)
        info["is_success"] = bool(success)
        # Episodes end on success; the time limit comes from max_episode_steps at registration.
        return self._get_obs(), float(reward), bool(success), False, info

    def render(self) -> np.ndarray | None:
        """The task camera's image at (render_height, render_width), as HxWx3 uint8."""
        if self.render_mode != "rgb_array":
            return None
        if self._big_renderer is None:
            self._big_renderer = make_renderer(self.model, *self._render_size)
        self._big_renderer.update_scene(self.data, camera=self._cam_id)
        return self._big_renderer.render()

    def close(self) -> None:
        for renderer in (self._renderer, self._big_renderer):
            if renderer is not None:
                renderer.close()
        self._big_renderer = None

    # ---- helpers ------------------------------------------------------------------------------

    def state_observation(self) -> ObsDict:
        """The privileged observation of the current state: ``{"proprio": proprio + task state}``.

        What ``obs_mode="state"`` returns from ``reset``/``step``; a state-based teacher reads
        it to label the states a pixel student visits (DAgger distillation, issue 5).
        """
        state = np.concatenate([self._proprio(), self._task_state()])
        return {PROPRIO: state.astype(np.float32)}

    def _get_obs(self) -> ObsDict:
        if self._renderer is None:
            return self.state_observation()
        self._renderer.update_scene(self.data, camera=self._cam_id)
        pixels = self._renderer.render()
        proprio = self._proprio().astype(np.float32)
        return {PIXELS: pixels, PROPRIO: proprio}

    def visual_params(self) -> dict[str, Any]:
        """What this episode's visual variation drew (all defaults under "none").

        ``light_scale`` (the diffuse light's factor), ``camera_shift`` (m, x/y/z),
        ``rgb`` (each recoloured geom's colour) and ``distractors`` (how many are shown):
        for analysing which variation a policy fails under (scripts/variation_failures.py).
        """
        m, default = self.model, self._default_visual
        lit = default["light_diffuse"][:, 0] > 0
        return {
            "light_scale": float(
                np.mean(m.light_diffuse[lit, 0] / default["light_diffuse"][lit, 0])
            ),
            "camera_shift": (m.cam_pos[self._cam_id] - default["cam_pos"][self._cam_id]).tolist(),
            "rgb": {n: m.geom_rgba[self._geom_ids[n], :3].tolist() for n in self.recolour_geoms},
            "distractors": int(
                sum(m.geom_rgba[self._geom_ids[n], 3] > 0 for n in self.distractor_geoms)
            ),
        }

    def _uniform_xy(self, radius: float) -> np.ndarray:
        return self.np_random.uniform(-radius, radius, size=2)

    def _apply_variation(self) -> None:
        m = self.model
        m.geom_rgba[:] = self._default_visual["geom_rgba"]
        m.cam_pos[:] = self._default_visual["cam_pos"]
        m.light_diffuse[:] = self._default_visual["light_diffuse"]
        m.light_pos[:] = self._default_visual["light_pos"]
        distractors = [self._geom_ids[n] for n in self.distractor_geoms]
        if self.variation in ("none", "appearance"):
            for gid in distractors:
                m.geom_rgba[gid, 3] = 0.0  # alpha 0: not drawn
        if self.variation == "none":
            return
        rng = self.np_random
        if self.variation in ("hard", "appearance"):
            # Colours: jitter around the default so every part stays recognisable.
            for name in self.recolour_geoms:
                gid = self._geom_ids[name]
                rgb = m.geom_rgba[gid, :3] + rng.uniform(-0.3, 0.3, size=3)
                m.geom_rgba[gid, :3] = np.clip(rgb, 0.0, 1.0)
            m.light_diffuse[:] *= rng.uniform(0.5, 1.1)
            m.light_pos[:, :2] += rng.uniform(-0.3, 0.3, size=(m.nlight, 2))
            m.cam_pos[self._cam_id] += rng.uniform(-0.015, 0.015, size=3)
        if self.variation == "appearance":
            return
        # One or two distractors, somewhere clear of the task's targets and objects.
        n_shown = int(rng.integers(1, len(distractors) + 1))
        clear = self._keep_clear()
        for i, gid in enumerate(distractors):
            if i >= n_shown:
                m.geom_rgba[gid, 3] = 0.0
                continue
            xy = self._uniform_xy(self.workspace)
            for _ in range(50):
                if all(np.linalg.norm(xy - p) > self.distractor_clearance for p in clear):
                    break
                xy = self._uniform_xy(self.workspace)
            m.geom_pos[gid, :2] = xy
            m.geom_rgba[gid, :3] = rng.uniform(0.1, 0.9, size=3)
            m.geom_rgba[gid, 3] = 1.0

    def _body_xy(self, name: str) -> np.ndarray:
        return np.array(self.data.body(name).xpos[:2])

    def _site_pos(self, name: str) -> np.ndarray:
        return np.array(self.data.site(name).xpos)

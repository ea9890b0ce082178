"""MuJoCo vision-action tasks for swan-policy (registered as ``swan_envs/<Task>-v0``)."""

from __future__ import annotations

import os
import sys

# Headless rendering: MuJoCo picks its GL backend when it is first imported, so choose EGL
# (Mesa's software EGL works on CPU-only machines) before anything imports mujoco, unless the
# user chose a backend or has a display.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY") and sys.platform != "darwin":
    os.environ["MUJOCO_GL"] = "egl"
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from gymnasium.envs.registration import register, registry  # noqa: E402  (after MUJOCO_GL)

__version__ = "0.1.0"

# (id, entry point, max_episode_steps, kwargs). Entry points are strings, so importing
# swan_envs stays cheap: mujoco and the MJCF files load only when an env is made.
_PENDULUM, _REACHER = (
    "swan_envs.pixels:make_pixel_inverted_pendulum",
    "swan_envs.pixels:make_pixel_reacher",
)
_ENVS: tuple[tuple[str, str, int, dict[str, object]], ...] = (
    ("swan_envs/Reach-v0", "swan_envs.reach:ReachEnv", 50, {}),
    ("swan_envs/Push-v0", "swan_envs.push:PushEnv", 100, {}),
    ("swan_envs/PickPlace-v0", "swan_envs.pick_place:PickPlaceEnv", 150, {}),
    # v1 renders (and tests Reacher's success on) the current state; v0, kept for
    # reproducibility, renders one physics substep behind (pixels.py, Version History)
    ("swan_envs/PixelInvertedPendulum-v1", _PENDULUM, 200, {}),
    ("swan_envs/PixelReacher-v1", _REACHER, 50, {}),
    ("swan_envs/PixelInvertedPendulum-v0", _PENDULUM, 200, {"sync_state": False}),
    ("swan_envs/PixelReacher-v0", _REACHER, 50, {"sync_state": False}),
)

for _env_id, _entry_point, _steps, _kwargs in _ENVS:
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point, max_episode_steps=_steps, kwargs=_kwargs)

ENV_IDS: tuple[str, ...] = tuple(env_id for env_id, *_ in _ENVS)
TASK_IDS: tuple[str, ...] = ENV_IDS[:3]
# The tasks' ``variation`` kwarg. "hard" = "appearance" (colours, lighting, a camera shift)
# + "distractors" (1-2 visual-only look-alikes); each half also exists alone, for ablations.
VARIATIONS: tuple[str, ...] = ("none", "hard", "appearance", "distractors")

__all__ = ["ENV_IDS", "TASK_IDS", "VARIATIONS", "__version__"]

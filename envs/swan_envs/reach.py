"""Reach: a 2-link planar arm moves its fingertip to a target that is only visible in the image."""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from swan_envs._base import SwanMujocoEnv


class ReachEnv(SwanMujocoEnv):
    """Move a 2-link arm's fingertip onto a red target disc seen from a top-down camera.

    ## Description
    A planar arm with two hinge joints (links of 12 cm) sits in the middle of a table. A red
    disc (radius 3 cm) marks the target. The target position is not part of ``proprio``: a
    policy has to find it in ``pixels``. The easiest of the three swan_envs tasks.

    ## Action Space
    ``Box(-1, 1, (2,), float32)``: desired angular velocity of each joint, scaled to +-3 rad/s
    and tracked by velocity servos. Values outside [-1, 1] are clipped; a wrong shape or a
    NaN/Inf raises ``ValueError``.

    ## Observation Space
    ``Dict(pixels=Box(0, 255, (height, width, 3), uint8), proprio=Box(-inf, inf, (6,), float32))``.
    ``proprio`` = [cos q0, sin q0, cos q1, sin q1, dq0, dq1].

    With ``obs_mode="state"`` (privileged, for state-based RL teachers): no image, and
    ``Dict(proprio=Box(-inf, inf, (10,), float32))`` = the 6 values above + [target x, target y,
    target x - fingertip x, target y - fingertip y] (metres). ``env.unwrapped.state_observation()``
    returns the same in either mode.

    ## Rewards
    ``-distance(fingertip, target) - 0.01 * |action|^2`` per step (metres).

    ## Starting State
    Joint angles uniform in [-pi, pi] (q0) and [-2.5, 2.5] (q1), zero velocity. The target is
    uniform in the annulus 6-22 cm around the base, at least 8 cm from the fingertip.

    ## Episode End
    Terminates when the fingertip is within 2.5 cm of the target centre
    (``info["is_success"]`` is True). Truncated after 50 steps (2.5 s) by ``max_episode_steps``.

    ## Arguments
    ``gymnasium.make("swan_envs/Reach-v0", width=64, height=64, render_mode=None,
    variation="none", render_width=256, render_height=256, obs_mode="pixels")``.
    ``variation="hard"`` randomises colours, lighting, a small camera shift and adds 1-2
    visual-only distractors at each reset; ``"appearance"`` and ``"distractors"`` are its two
    halves alone. ``obs_mode="state"``: see Observation Space.

    ## Version History
    * v0: initial release (issue 3); ``obs_mode`` added in issue 5 (the default observations
      and the dynamics are unchanged).
    """

    xml_file = "reach.xml"
    frame_skip = 5
    proprio_dim = 6
    recolour_geoms = ("floor", "target", "link0", "link1", "fingertip")
    workspace = 0.26
    success_radius = 0.025
    task_state_dim = 4

    def _sample_state(self) -> None:
        rng = self.np_random
        self.data.qpos[0] = rng.uniform(-np.pi, np.pi)
        self.data.qpos[1] = rng.uniform(-2.5, 2.5)
        self.data.qvel[:] = 0.0
        mujoco.mj_kinematics(self.model, self.data)
        tip = self._site_pos("fingertip")[:2]
        while True:
            radius, angle = rng.uniform(0.06, 0.22), rng.uniform(-np.pi, np.pi)
            target = radius * np.array([np.cos(angle), np.sin(angle)])
            if np.linalg.norm(target - tip) > 0.08:
                break
        self.data.mocap_pos[0, :2] = target
        self.target = target

    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = 3.0 * action

    def _proprio(self) -> np.ndarray:
        q, dq = self.data.qpos[:2], self.data.qvel[:2]
        return np.concatenate([np.cos(q[:1]), np.sin(q[:1]), np.cos(q[1:]), np.sin(q[1:]), dq])

    def _evaluate(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        distance = float(np.linalg.norm(self._site_pos("fingertip")[:2] - self.target))
        reward = -distance - 0.01 * float(np.square(action).sum())
        return reward, distance < self.success_radius, {"distance": distance}

    def _keep_clear(self) -> list[np.ndarray]:
        return [self.target]

    def _task_state(self) -> np.ndarray:
        tip = self._site_pos("fingertip")[:2]
        return np.concatenate([self.target, self.target - tip])

"""Push: a round pusher pushes a puck into a goal disc that is only visible in the image."""

from __future__ import annotations

from typing import Any

import numpy as np

from swan_envs._base import SwanMujocoEnv


class PushEnv(SwanMujocoEnv):
    """Push a red puck into a green goal disc with a blue pusher, seen from a top-down camera.

    ## Description
    A pusher (radius 2 cm) moves on x/y slides over a table; it touches only the puck
    (radius 3 cm), which slides on the table with dry friction. Neither the puck nor the goal
    (radius 4.5 cm) is in ``proprio``: a policy has to find both in ``pixels``, then get behind
    the puck and push it. Harder than Reach: the contact makes the outcome depend on the
    approach direction.

    ## Action Space
    ``Box(-1, 1, (2,), float32)``: desired pusher velocity in x and y, scaled to +-0.3 m/s and
    tracked by velocity servos. Values outside [-1, 1] are clipped; a wrong shape or a NaN/Inf
    raises ``ValueError``.

    ## Observation Space
    ``Dict(pixels=Box(0, 255, (height, width, 3), uint8), proprio=Box(-inf, inf, (4,), float32))``.
    ``proprio`` = [pusher x, pusher y, pusher vx, pusher vy] (metres, m/s).

    ## Rewards
    ``-distance(puck, goal) - 0.5 * max(distance(pusher, puck) - 0.05, 0)`` per step (metres):
    dense in both getting to the puck and moving it.

    ## Starting State
    Puck uniform in a 30 cm square, goal uniform in a 36 cm square at least 10 cm from the puck,
    pusher uniform in a 40 cm square at least 8 cm from the puck; everything at rest.

    ## Episode End
    Terminates when the puck centre is within 3 cm of the goal centre (``info["is_success"]``).
    Truncated after 100 steps (5 s) by ``max_episode_steps``.

    ## Arguments
    ``gymnasium.make("swan_envs/Push-v0", width=64, height=64, render_mode=None,
    variation="none", render_width=256, render_height=256)``. ``variation="hard"`` randomises
    colours, lighting, a small camera shift and adds 1-2 visual-only distractors at each reset;
    ``"appearance"`` and ``"distractors"`` are its two halves alone.

    ## Version History
    * v0: initial release (issue 3).
    """

    xml_file = "push.xml"
    frame_skip = 10
    proprio_dim = 4
    recolour_geoms = ("floor", "goal", "pusher", "puck")
    workspace = 0.26
    success_radius = 0.03
    puck_radius = 0.03
    pusher_radius = 0.02

    def _sample_state(self) -> None:
        puck = self._uniform_xy(0.15)
        goal = self._uniform_xy(0.18)
        while np.linalg.norm(goal - puck) < 0.10:
            goal = self._uniform_xy(0.18)
        pusher = self._uniform_xy(0.2)
        while np.linalg.norm(pusher - puck) < 0.08:
            pusher = self._uniform_xy(0.2)
        self.data.qpos[0:2] = pusher
        self.data.qpos[2:4] = puck
        self.data.qvel[:] = 0.0
        self.data.mocap_pos[0, :2] = goal
        self.goal = goal

    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = 0.3 * action

    def _proprio(self) -> np.ndarray:
        return np.concatenate([self.data.qpos[0:2], self.data.qvel[0:2]])

    @property
    def puck_xy(self) -> np.ndarray:
        return np.array(self.data.qpos[2:4])

    @property
    def pusher_xy(self) -> np.ndarray:
        return np.array(self.data.qpos[0:2])

    def _evaluate(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        puck_goal = float(np.linalg.norm(self.puck_xy - self.goal))
        pusher_puck = float(np.linalg.norm(self.pusher_xy - self.puck_xy))
        reward = -puck_goal - 0.5 * max(pusher_puck - 0.05, 0.0)
        return reward, puck_goal < self.success_radius, {"distance": puck_goal}

    def _keep_clear(self) -> list[np.ndarray]:
        return [self.goal, self.puck_xy]

"""PickPlace: a Cartesian parallel gripper picks a cube and puts it on a target disc."""

from __future__ import annotations

from typing import Any

import numpy as np

from swan_envs._base import SwanMujocoEnv

CUBE_HALF = 0.02


class PickPlaceEnv(SwanMujocoEnv):
    """Pick up a red cube and put it down on a green target disc.

    ## Description
    A parallel gripper moves on x/y/z slides (gravity compensated) above a table with a 4 cm
    cube and a target disc (radius 4 cm). A camera in front of and above the table sees the
    scene at an angle, so heights show in the image. Neither the cube nor the target is in
    ``proprio``. The hardest of the three tasks: reach, grasp, carry and place in sequence.

    ## Action Space
    ``Box(-1, 1, (4,), float32)``: desired gripper velocity in x, y, z (scaled to +-0.25 m/s,
    tracked by velocity servos) and the grip command: positive closes the fingers, zero or
    negative opens them (both follow it through force-limited position servos). The grip is
    binary, as in robomimic's and LIBERO's grippers, so a learner's output near the switch
    from +1 to -1 still opens or closes the fingers fully. Values outside [-1, 1] are
    clipped; a wrong shape or a NaN/Inf raises ``ValueError``.

    ## Observation Space
    ``Dict(pixels=Box(0, 255, (height, width, 3), uint8), proprio=Box(-inf, inf, (8,), float32))``.
    ``proprio`` = [tool-centre-point x, y, z, gripper vx, vy, vz, left finger, right finger]
    (metres, m/s; a finger's value is how far it has closed).

    ## Rewards
    ``-distance(tcp, cube) - 2 * distance(cube, resting pose on the target)`` per step (metres).

    ## Starting State
    Cube uniform in a 30 cm square with a yaw in [-0.5, 0.5] rad; target uniform in a 30 cm
    square at least 10 cm from the cube; gripper open, uniform in a 30 cm square, 15-25 cm up.

    ## Episode End
    Terminates when the cube rests on the table with its centre within 3 cm of the target
    centre and the gripper has let go (``info["is_success"]``). Truncated after 150 steps (6 s)
    by ``max_episode_steps``.

    ## Arguments
    ``gymnasium.make("swan_envs/PickPlace-v0", width=64, height=64, render_mode=None,
    variation="none", render_width=256, render_height=256)``. ``variation="hard"`` randomises
    colours, lighting, a small camera shift and adds 1-2 visual-only distractors at each reset;
    ``"appearance"`` and ``"distractors"`` are its two halves alone.

    ## Version History
    * v0: initial release (issue 3). Since: the fingers no longer collide with each other,
      and finger-cube friction is 0.3 (was 1.5), so a yawed cube squares up in the jaws
      instead of jamming corner-first and falling out when carried. The grip command is
      binary (was proportional: a learner that output ~0 left the fingers half closed on
      the cube, never letting go).
    """

    xml_file = "pick_place.xml"
    frame_skip = 10
    proprio_dim = 8
    action_dim = 4
    recolour_geoms = ("floor", "target", "cube", "palm")
    workspace = 0.24
    success_radius = 0.03
    max_speed = 0.25
    finger_travel = 0.035

    def _sample_state(self) -> None:
        rng = self.np_random
        cube = self._uniform_xy(0.15)
        target = self._uniform_xy(0.15)
        while np.linalg.norm(target - cube) < 0.10:
            target = self._uniform_xy(0.15)
        yaw = rng.uniform(-0.5, 0.5)
        qpos = self.data.qpos
        qpos[0:3] = [*cube, CUBE_HALF]
        qpos[3:7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        qpos[7:9] = self._uniform_xy(0.15)
        qpos[9] = rng.uniform(-0.05, 0.05)
        qpos[10:12] = 0.0
        self.data.qvel[:] = 0.0
        self.data.mocap_pos[0, :2] = target
        self.target = target

    def _apply_action(self, action: np.ndarray) -> None:
        self.data.ctrl[0:3] = self.max_speed * action[:3]
        self.data.ctrl[3:5] = self.finger_travel if action[3] > 0.0 else 0.0

    @property
    def tcp(self) -> np.ndarray:
        """Tool centre point (between the fingertips), world frame."""
        return self._site_pos("tcp")

    @property
    def cube_pos(self) -> np.ndarray:
        return np.array(self.data.qpos[0:3])

    @property
    def fingers(self) -> np.ndarray:
        return np.array(self.data.qpos[10:12])

    def _proprio(self) -> np.ndarray:
        return np.concatenate([self.tcp, self.data.qvel[6:9], self.fingers])

    def _evaluate(self, action: np.ndarray) -> tuple[float, bool, dict[str, Any]]:
        cube = self.cube_pos
        rest = np.array([*self.target, CUBE_HALF])
        reach = float(np.linalg.norm(self.tcp - cube))
        place = float(np.linalg.norm(cube - rest))
        on_target = float(np.linalg.norm(cube[:2] - self.target)) < self.success_radius
        resting = cube[2] < CUBE_HALF + 0.005
        released = bool(np.all(self.fingers < 0.01))
        success = on_target and resting and released
        return -reach - 2.0 * place, success, {"distance": place}

    def _keep_clear(self) -> list[np.ndarray]:
        return [self.target, self.cube_pos[:2]]

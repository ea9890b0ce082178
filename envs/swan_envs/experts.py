"""Scripted experts that act from the true simulator state.

``make_expert(env)`` returns a callable ``expert(obs) -> action`` for any env built by
``gymnasium.make`` (wrappers included): it reads the simulator through ``env.unwrapped`` and
ignores the pixels. Every expert has

* ``expert.phase``: the name of its current phase (e.g. "reach", "grasp", "carry", "place"),
  so later issues can line up gate activity with task phases;
* ``expert.reset()``: forget the episode's phase. Calling it is optional: an expert notices a
  new episode itself (the env's step counter goes back to 0) and resets its phase.

Actions are float32 in the env's action space ([-1, 1] for every swan_envs id).
"""

from __future__ import annotations

import copy
from typing import Any, cast

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

from swan_envs.pick_place import CUBE_HALF, PickPlaceEnv
from swan_envs.push import PushEnv
from swan_envs.reach import ReachEnv


def _wrap_angle(angle: float) -> float:
    return float((angle + np.pi) % (2.0 * np.pi) - np.pi)


def _clip_norm(vec: np.ndarray, limit: float) -> np.ndarray:
    norm = float(np.linalg.norm(vec))
    return vec if norm <= limit else vec * (limit / norm)


class Expert:
    """Base class: episode tracking and the ``phase`` attribute."""

    phases: tuple[str, ...] = ()

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.env = env
        self.phase = self.phases[0] if self.phases else ""
        self._last_step = -1

    def reset(self) -> None:
        """Start a new episode: go back to the first phase."""
        self.phase = self.phases[0] if self.phases else ""

    def __call__(self, obs: Any) -> np.ndarray:
        step = self._step_counter()
        if step is not None:
            if step <= self._last_step or step == 0:
                self.reset()
            self._last_step = step
        return np.asarray(self.act(), dtype=np.float32)

    def act(self) -> np.ndarray:
        raise NotImplementedError

    def _step_counter(self) -> int | None:
        count = getattr(self.env.unwrapped, "elapsed_steps", None)
        return None if count is None else int(count)


class ReachExpert(Expert):
    """``swan_envs/Reach-v0``: analytic 2-link IK, then joint-velocity P control. Stateless."""

    phases = ("reach",)
    gain = 8.0  # rad/s per rad of joint error

    def act(self) -> np.ndarray:
        env = cast(ReachEnv, self.env.unwrapped)  # make_expert picked this class by id
        q = env.data.qpos[:2]
        link = 0.12
        tx, ty = env.target
        cos_elbow = (tx * tx + ty * ty - 2 * link * link) / (2 * link * link)
        elbow = float(np.arccos(np.clip(cos_elbow, -1.0, 1.0)))
        # Of the two elbow solutions, keep the one on the current side (no fold-through).
        elbow = elbow if q[1] >= 0 else -elbow
        shoulder = np.arctan2(ty, tx) - np.arctan2(
            link * np.sin(elbow), link + link * np.cos(elbow)
        )
        err = np.array([_wrap_angle(shoulder - q[0]), elbow - q[1]])
        return np.clip(self.gain * err / 3.0, -1.0, 1.0)


class PushExpert(Expert):
    """Go round the puck to the point behind it (seen from the goal), then push it in.

    Phases: "approach" (move to the pre-push point, around the puck if needed) and "push"
    (drive along the puck-goal line, steering so the contact normal points at the goal).
    The phase follows from the state alone: "push" while the pusher is in the corridor
    right behind the puck.
    """

    phases = ("approach", "push")
    contact = 0.05  # puck radius + pusher radius

    def act(self) -> np.ndarray:
        env = cast(PushEnv, self.env.unwrapped)  # make_expert picked this class by id
        pusher, puck, goal = env.pusher_xy, env.puck_xy, env.goal
        to_goal = goal - puck
        dist = float(np.linalg.norm(to_goal))
        u = to_goal / max(dist, 1e-6)
        perp = np.array([-u[1], u[0]])
        rel = pusher - puck
        along, lateral = float(rel @ u), float(rel @ perp)
        behind = puck - u * (self.contact + 0.015)

        # The phase is a function of the state alone (no hysteresis), so that DAgger's
        # labels for a state do not depend on how the learner got there.
        in_corridor = -(self.contact + 0.025) < along < -0.03 and abs(lateral) < 0.015
        self.phase = "push" if in_corridor else "approach"

        if self.phase == "push":
            speed = min(0.25, 2.0 * dist + 0.05)
            # Steer the pusher onto the puck-goal line behind the puck.
            line_target = puck - u * (self.contact - 0.005)
            correction = (line_target - pusher) - u * float((line_target - pusher) @ u)
            velocity = speed * u + 6.0 * correction
        else:
            target = behind
            if along > -0.03:
                # On the goal side: go round the puck on the side the pusher is on.
                side = 1.0 if lateral >= 0 else -1.0
                target = puck + side * perp * (self.contact + 0.03) - u * 0.05
            velocity = 8.0 * (target - pusher)
        return np.clip(_clip_norm(velocity, 0.3) / 0.3, -1.0, 1.0)


class PickPlaceExpert(Expert):
    """Hover over the cube, descend, close, lift, carry over the target, lower, open.

    Phases: "reach" (over the cube and down to it, gripper open), "grasp" (close on the
    cube), "carry" (lift and move over the target) and "place" (lower, open, back off).

    The phase is a function of the state alone (no counters, no hysteresis), so that
    DAgger's label for a state does not depend on how the learner got there: the cube in
    the closed fingers means carry or place, the open fingers around it mean close, and
    anything else means reach. Off its own path it opens the fingers before it descends
    (closed ones land on the cube's top and jam), and a cube a learner grasped without its
    help is carried on. If the cube slips out, it goes back to "reach".
    """

    phases = ("reach", "grasp", "carry", "place")
    hover = 0.07  # height above the cube for the approach (m)
    carry_height = 0.1  # tcp height while carrying (m)
    rest_z = CUBE_HALF + 0.0005  # tcp height that puts the held cube on the table
    funnel = (0.008, 0.03)  # descend fully within 8 mm; full height from 8 + 30 mm off (m)
    # Lowering onto the target: the success radius is 30 mm, so the cube goes fully down
    # (and is let go) within 15 mm. A tighter funnel held a learner that centred to ~1 cm
    # hovering 5-9 mm above the table, told to hold on, until the episode timed out.
    place_funnel = (0.015, 0.03)
    gains = (10.0, 10.0, 5.0)  # velocity per metre of error (m/s per m), x / y / z

    def act(self) -> np.ndarray:
        env = cast(PickPlaceEnv, self.env.unwrapped)  # make_expert picked this class by id
        tcp, cube, target = env.tcp, env.cube_pos, env.target
        held = np.linalg.norm(cube - tcp) < 0.02 and bool(np.all(env.fingers > 0.008))
        resting = cube[2] < self.rest_z + 0.003
        if held:
            goal, grip = self._carry_goal(tcp, target), 1.0
            xy_err = float(np.linalg.norm(target - tcp[:2]))
            self.phase = "place" if xy_err <= sum(self.place_funnel) else "carry"
            if resting and xy_err <= self.place_funnel[0]:  # down on the target: let go
                # ... still pressing down: a label that went up here, a few mm from
                # states labelled "down" (held just above the table), taught a learner
                # the average: hover there (backing off waits until the fingers are open)
                goal, grip = np.array([*tcp[:2], self.rest_z]), -1.0
        else:
            xy_err = float(np.linalg.norm(cube[:2] - tcp[:2]))
            opened = bool(np.all(env.fingers < 0.01))
            placed = resting and float(np.linalg.norm(cube[:2] - target)) < 0.02
            if placed and xy_err < 0.02:
                self.phase, grip = "place", -1.0
                goal = np.array([*tcp[:2], self.carry_height])
            elif opened and xy_err <= 0.01 and abs(cube[2] - tcp[2]) < 0.01:
                self.phase, grip, goal = "grasp", 1.0, cube.copy()
            else:
                self.phase, grip = "reach", -1.0
                # A funnel: the height above the cube shrinks with the horizontal error
                # (down to the cube within 8 mm), so every state near the cube gets a label
                # that both centres and descends -- no threshold a learner must hit to be
                # told "down". Closed fingers stay up and open first.
                height = self.hover * self._funnel(xy_err) if opened else self.hover
                goal = np.array([*cube[:2], cube[2] + height])
        # The height goal is steep in the horizontal error, which a pixel policy sees to a
        # few mm only: a gentler z gain keeps the z label a smooth function of the state
        # (it no longer flips from full up to full down within 1.4 cm).
        velocity = _clip_norm(np.asarray(self.gains) * (goal - tcp), 0.25) / 0.25
        return np.clip(np.array([*velocity, grip]), -1.0, 1.0)

    def _funnel(self, xy_err: float, funnel: tuple[float, float] | None = None) -> float:
        """0 within ``funnel[0]`` of the goal, rising linearly to 1 over ``funnel[1]``."""
        inner, width = funnel or self.funnel
        return float(np.clip((xy_err - inner) / width, 0.0, 1.0))

    def _carry_goal(self, tcp: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Lift straight up first; then travel at carrying height and lower in a funnel
        over the target (the descent to the cube's shape, wider: ``place_funnel``)."""
        xy_err = float(np.linalg.norm(target - tcp[:2]))
        if xy_err > sum(self.place_funnel) and tcp[2] < 0.06:
            return np.array([*tcp[:2], self.carry_height])
        funnel = self._funnel(xy_err, self.place_funnel)
        height = self.rest_z + (self.carry_height - self.rest_z) * funnel
        return np.array([*target, height])


def _to_env_units(raw: np.ndarray, env: gym.Env[Any, Any]) -> np.ndarray:
    """Map an action in the base env's units to the (possibly rescaled) outer action space."""
    base_space, outer = env.unwrapped.action_space, env.action_space
    assert isinstance(base_space, spaces.Box) and isinstance(outer, spaces.Box)
    raw = np.clip(raw, base_space.low, base_space.high)
    if np.array_equal(base_space.low, outer.low) and np.array_equal(base_space.high, outer.high):
        return raw
    unit = (raw - base_space.low) / (base_space.high - base_space.low)
    return outer.low + unit * (outer.high - outer.low)


class InvertedPendulumExpert(Expert):
    """Discrete-time LQR around the upright pole. Stateless (phase "balance").

    The linear model comes from MuJoCo's own finite differences (``mjd_transitionFD``) at the
    upright state, held for the env's ``frame_skip`` substeps; the gain from iterating the
    Riccati equation. Works on ``InvertedPendulum-v5`` and its pixel-wrapped form.
    """

    phases = ("balance",)

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        base: Any = env.unwrapped
        # A scratch copy of the model (the running simulation is never touched). Finite
        # differences need a non-RK4 integrator: Euler with 10x finer steps over the same span.
        model = copy.copy(base.model)
        substeps = 10
        model.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER
        model.opt.timestep = base.model.opt.timestep / substeps
        data = mujoco.MjData(model)
        nx, nu = 2 * model.nv, model.nu
        a_mat, b_mat = np.zeros((nx, nx)), np.zeros((nx, nu))
        mujoco.mj_forward(model, data)
        mujoco.mjd_transitionFD(model, data, 1e-6, True, a_mat, b_mat, None, None)
        # Zero-order hold over one env step (frame_skip physics steps).
        a_k, b_k = np.eye(nx), np.zeros((nx, nu))
        for _ in range(int(base.frame_skip) * substeps):
            a_k, b_k = a_mat @ a_k, a_mat @ b_k + b_mat
        q_cost, r_cost = np.diag([1.0, 10.0, 0.1, 1.0]), np.eye(nu) * 0.01
        p_mat = q_cost.copy()
        for _ in range(2000):
            gain = np.linalg.solve(r_cost + b_k.T @ p_mat @ b_k, b_k.T @ p_mat @ a_k)
            p_mat = q_cost + a_k.T @ p_mat @ (a_k - b_k @ gain)
        self.gain = gain

    def act(self) -> np.ndarray:
        data = cast(MujocoEnv, self.env.unwrapped).data  # gymnasium's own MuJoCo env
        state = np.concatenate([data.qpos, data.qvel])
        return _to_env_units(-self.gain @ state, self.env)


class ReacherV5Expert(Expert):
    """``Reacher-v5``: analytic 2-link IK, then joint PD on torques. Stateless (phase "reach")."""

    phases = ("reach",)
    links = (0.1, 0.11)  # shoulder-elbow and elbow-fingertip lengths of reacher.xml
    kp, kd = 2.0, 0.25  # torque command per rad and per rad/s (gear 200, armature 1)

    def act(self) -> np.ndarray:
        data = cast(MujocoEnv, self.env.unwrapped).data  # gymnasium's own MuJoCo env
        q, dq = data.qpos[:2], data.qvel[:2]
        tx, ty = data.body("target").xpos[:2]
        l1, l2 = self.links
        cos_elbow = (tx * tx + ty * ty - l1 * l1 - l2 * l2) / (2 * l1 * l2)
        elbow = float(np.arccos(np.clip(cos_elbow, -1.0, 1.0)))
        elbow = elbow if q[1] >= 0 else -elbow
        shoulder = np.arctan2(ty, tx) - np.arctan2(l2 * np.sin(elbow), l1 + l2 * np.cos(elbow))
        err = np.array([_wrap_angle(shoulder - q[0]), elbow - q[1]])
        return _to_env_units(self.kp * err - self.kd * dq, self.env)


def make_expert(env: gym.Env[Any, Any]) -> Expert:
    """The scripted expert for ``env`` (a ``gymnasium.make`` env, wrappers included).

    Args:
        env: a swan_envs task, a pixel-wrapped env from ``swan_envs.pixels`` or the raw
            ``InvertedPendulum-v5`` / ``Reacher-v5``.

    Returns:
        An :class:`Expert`: call it with the latest observation to get the action.

    Raises:
        ValueError: no expert is known for this env.
    """
    base = env.unwrapped
    if isinstance(base, ReachEnv):
        return ReachExpert(env)
    if isinstance(base, PushEnv):
        return PushExpert(env)
    if isinstance(base, PickPlaceEnv):
        return PickPlaceExpert(env)
    # Imported here: only these two experts need gymnasium's MuJoCo env classes.
    from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv
    from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

    if isinstance(base, InvertedPendulumEnv):
        return InvertedPendulumExpert(env)
    if isinstance(base, ReacherEnv):
        return ReacherV5Expert(env)
    raise ValueError(f"no scripted expert for {type(base).__name__} (env {env})")

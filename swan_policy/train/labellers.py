"""Labellers for DAgger and distillation: envs whose ``info["expert_action"]`` labels
each observation, from the scripted expert or from a trained teacher policy."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from swan_policy.config import ExperimentConfig
from swan_policy.envs import make_env
from swan_policy.evaluate import EXPERT_ACTION, make_vec_env
from swan_policy.policy import SwanPolicy

# Wraps an env so that ``info["expert_action"]`` labels each observation (in the env's process).
Labeller = Callable[[gym.Env[Any, Any]], gym.Env[Any, Any]]


class TeacherLabels(gym.Wrapper[Any, Any, Any, Any]):
    """Adds ``info["expert_action"]``: a trained teacher SwanPolicy's action for the state
    just reached, computed from ``env.unwrapped.state_observation()`` (the privileged
    observation a state-based teacher was trained on, e.g. Reach-v0 ``obs_mode="state"``).
    """

    def __init__(self, env: gym.Env[Any, Any], teacher_dir: str) -> None:
        super().__init__(env)
        state_fn = getattr(env.unwrapped, "state_observation", None)
        if not callable(state_fn):
            raise ValueError(
                f"{env.unwrapped}: no state_observation(); a state teacher needs the env's "
                "privileged state (swan_envs tasks provide it)"
            )
        self.state_observation: Callable[[], dict[str, np.ndarray]] = state_fn
        if multiprocessing.parent_process() is not None:
            torch.set_num_threads(1)  # one thread per env worker
        self.teacher = SwanPolicy.from_pretrained(teacher_dir).eval()
        self.teacher.track_stats = False
        for gate in self.teacher.gates().values():
            gate.track_stats = False

    def _label(self, info: dict[str, Any]) -> dict[str, Any]:
        info[EXPERT_ACTION] = self.teacher.act(self.state_observation())
        return info

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        return obs, self._label(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, float(reward), terminated, truncated, self._label(info)


def teacher_labeller(teacher_dir: str | Path) -> Labeller:
    """A labeller from a teacher policy directory (``save_pretrained`` layout)."""
    SwanPolicy.from_pretrained(teacher_dir)  # fail here, not in every worker
    return partial(TeacherLabels, teacher_dir=str(teacher_dir))


def _labelled_env(env_cfg: Any, labeller: Labeller) -> gym.Env[Any, Any]:
    if multiprocessing.parent_process() is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's
    return labeller(make_env(env_cfg))


def labelled_vec_env(cfg: ExperimentConfig, n: int, labeller: Labeller | None) -> Any:
    """``n`` envs whose infos carry labels: the scripted expert's, or ``labeller``'s."""
    if labeller is None:
        return make_vec_env(cfg.env, n, labels=True)
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    fns: list[Callable[[], gym.Env[Any, Any]]] = [
        partial(_labelled_env, cfg.env, labeller) for _ in range(n)
    ]
    return SubprocVecEnv(fns, start_method="forkserver") if n > 1 else DummyVecEnv(fns)

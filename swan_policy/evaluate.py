"""Rollouts in simulation: evaluation metrics, DAgger data, gate statistics, videos.

One rollout engine serves evaluation and DAgger. Environments run in SB3 vector envs
(``SubprocVecEnv`` with ``workers > 1``); the policy runs batched in this process.
Episodes are played in *waves*: wave ``w`` resets its ``n`` envs with seeds
``seed + w*n + i``, so episode ``j`` always starts from seed ``seed + j`` whatever the
number of workers -- every arm of a comparison sees the same evaluation episodes.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from swan_policy.config import EnvConfig
from swan_policy.envs import check_spaces, make_env
from swan_policy.policy import SwanPolicy

EXPERT_ACTION = "expert_action"


class ExpertLabels(gym.Wrapper[Any, Any, Any, Any]):
    """Adds ``info["expert_action"]``: the scripted expert's action for the observation
    just returned (DAgger labels). The expert reads the simulator, so it lives here, in
    the env's own process."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        from swan_envs.experts import make_expert

        self.expert = make_expert(env)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        info[EXPERT_ACTION] = np.asarray(self.expert(obs), dtype=np.float32)
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[EXPERT_ACTION] = np.asarray(self.expert(obs), dtype=np.float32)
        return obs, float(reward), terminated, truncated, info


def _env_factory(cfg: EnvConfig, labels: bool) -> Callable[[], gym.Env[Any, Any]]:
    def make() -> gym.Env[Any, Any]:
        if multiprocessing.parent_process() is not None:
            # a worker: Ctrl-C is the trainer's to handle (it checkpoints, then closes us)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        env = make_env(cfg)
        return ExpertLabels(env) if labels else env

    return make


def make_vec_env(cfg: EnvConfig, n: int, labels: bool = False) -> Any:
    """SB3 vector env of ``n`` copies (subprocesses when ``n > 1``)."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    fns = [_env_factory(cfg, labels) for _ in range(n)]
    return SubprocVecEnv(fns, start_method="forkserver") if n > 1 else DummyVecEnv(fns)


@dataclass
class Episode:
    """One finished episode (``obs``/``expert_actions`` only when collecting)."""

    seed: int
    success: bool
    ret: float
    length: int
    budgets: list[float] = field(default_factory=list)
    obs: dict[str, list[np.ndarray]] | None = None
    expert_actions: list[np.ndarray] | None = None


BudgetFn = Callable[[dict[str, np.ndarray]], float]


def run_episodes(
    policy: SwanPolicy,
    vec: Any,
    episodes: int,
    seed: int,
    budget: float | BudgetFn = 1.0,
    collect: bool = False,
    beta: float = 0.0,
    rng: np.random.Generator | None = None,
    on_episode: Callable[[Episode], None] | None = None,
) -> list[Episode]:
    """Play ``episodes`` episodes with the policy (batched over the vector env).

    Args:
        policy: acts on every env each step (deterministic).
        vec: an SB3 vector env (see :func:`make_vec_env`; ``labels=True`` if collecting).
        episodes: how many episodes; episode ``j`` starts from seed ``seed + j``.
        budget: a fixed budget, or a function of the batched observation (a scheduler).
        collect: keep observations and expert labels (DAgger).
        beta: probability of executing the expert's action instead (DAgger mixture).
        rng: randomness for the beta mixture.
        on_episode: called as each episode finishes (progress bars).
    """
    n = vec.num_envs
    rng = rng or np.random.default_rng(seed)
    done_eps: list[Episode] = []
    for wave in range(math.ceil(episodes / n)):
        first = wave * n
        active = min(n, episodes - first)
        vec.seed(seed + first)  # SB3 seeds env i with seed + first + i
        obs = vec.reset()
        infos = list(vec.reset_infos)
        eps = [
            Episode(
                seed + first + i,
                False,
                0.0,
                0,
                obs={} if collect else None,
                expert_actions=[] if collect else None,
            )
            for i in range(active)
        ]
        running = [True] * active + [False] * (n - active)
        while any(running):
            b = budget(obs) if callable(budget) else budget
            actions = act_batch(policy, obs, b)
            if collect or beta > 0:
                expert = np.stack([info[EXPERT_ACTION] for info in infos])
                if beta > 0:
                    use = rng.random(n) < beta
                    actions = np.where(use[:, None], expert, actions)
            for i in range(active):
                if running[i] and collect:
                    ep = eps[i]
                    assert ep.obs is not None and ep.expert_actions is not None
                    for k, v in obs.items():
                        ep.obs.setdefault(k, []).append(v[i].copy())
                    ep.expert_actions.append(expert[i].copy())
            obs, rewards, dones, step_infos = vec.step(actions)
            infos = [vec.reset_infos[i] if dones[i] else step_infos[i] for i in range(n)]
            for i in range(active):
                if not running[i]:
                    continue
                ep = eps[i]
                ep.ret += float(rewards[i])
                ep.length += 1
                ep.budgets.append(float(b))
                if dones[i]:
                    ep.success = bool(step_infos[i].get("is_success", False))
                    running[i] = False
                    done_eps.append(ep)
                    if on_episode is not None:
                        on_episode(ep)
    return done_eps


@torch.inference_mode()
def act_batch(policy: SwanPolicy, obs: dict[str, np.ndarray], budget: float) -> np.ndarray:
    """Validated batched observation in, float32 actions ``[n, A]`` out."""
    arrays = policy.obs_spec.validate(obs, batched=True)
    device = policy.action_low.device
    batch = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    actions = policy(batch, budget).cpu().numpy()
    if not np.isfinite(actions).all():
        raise FloatingPointError("policy produced a non-finite action")
    return actions


@dataclass
class BudgetResult:
    """Evaluation of one budget (or scheduler)."""

    label: str
    budget: float | None
    episodes: int
    success_rate: float
    return_mean: float
    return_std: float
    length_mean: float
    mean_budget: float
    macs_per_step: float
    active_fraction: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_policy(
    policy: SwanPolicy,
    env_cfg: EnvConfig,
    episodes: int,
    budgets: Sequence[float],
    workers: int = 1,
    seed: int = 10_000,
    on_episode: Callable[[Episode], None] | None = None,
) -> list[BudgetResult]:
    """Success, return, length, active fraction per layer and MACs/step per budget."""
    probe = make_env(env_cfg)
    try:
        check_spaces(policy, probe)
    finally:
        probe.close()
    vec = make_vec_env(env_cfg, min(workers, episodes))
    results = []
    was_training = policy.training
    policy.eval()
    try:
        for b in budgets:
            policy.reset_gate_stats()
            eps = run_episodes(policy, vec, episodes, seed, b, on_episode=on_episode)
            results.append(summarise(f"budget {b:g}", b, eps, policy))
    finally:
        vec.close()
        policy.train(was_training)
    return results


def summarise(
    label: str, budget: float | None, eps: list[Episode], policy: SwanPolicy
) -> BudgetResult:
    stats = policy.gate_stats()
    returns = np.array([e.ret for e in eps])
    all_budgets = [b for e in eps for b in e.budgets]
    return BudgetResult(
        label=label,
        budget=budget,
        episodes=len(eps),
        success_rate=float(np.mean([e.success for e in eps])),
        return_mean=float(returns.mean()),
        return_std=float(returns.std()),
        length_mean=float(np.mean([e.length for e in eps])),
        mean_budget=float(np.mean(all_budgets)) if all_budgets else float("nan"),
        macs_per_step=float(sum(stats["macs_per_step"].values())),
        active_fraction={k: v["active_fraction"] for k, v in stats["layers"].items()},
    )


def record_video(
    policy: SwanPolicy,
    env_cfg: EnvConfig,
    path: Path,
    seed: int,
    budget: float = 1.0,
    fps: int = 20,
) -> int:
    """Roll out one episode in this process and write its rendered frames (imageio)."""
    import imageio.v2 as imageio

    env = make_env(env_cfg, render_mode="rgb_array")
    try:
        check_spaces(policy, env)
        obs, _ = env.reset(seed=seed)
        frames = [env.render()]
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(policy.act(obs, budget))
            frames.append(env.render())
            done = terminated or truncated
    finally:
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, [np.asarray(f) for f in frames], fps=fps, macro_block_size=1)
    return len(frames)

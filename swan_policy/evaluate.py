"""Rollouts in simulation: evaluation metrics, DAgger data, gate statistics, videos.

One rollout engine serves evaluation and DAgger. Environments run in SB3 vector envs
(``SubprocVecEnv`` with ``workers > 1``); the policy runs in this process.
Episodes are played in *waves*: wave ``w`` resets its ``n`` envs with seeds
``seed + w*n + i``, so episode ``j`` always starts from seed ``seed + j`` whatever the
number of workers -- every arm of a comparison sees the same evaluation episodes.

By default each env's observation is forwarded alone (batch 1, as on the robot). A
batched forward rounds each sample differently depending on the other samples in the
batch (in the last bits of float32); a hard gate near its threshold or a closed-loop
rollout turns that into a different episode, so evaluation results would depend on the
number of workers. DAgger rollouts (``batched=True``) trade that for one forward per
budget per step.
"""

from __future__ import annotations

import math
import multiprocessing
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from swan_policy.budget.schedulers import Fixed, Scheduler, StepInfo, make_scheduler
from swan_policy.config import EnvConfig
from swan_policy.envs import check_spaces, make_env
from swan_policy.policy import SwanPolicy

EXPERT_ACTION = "expert_action"
PHASE = "phase"  # the scripted expert's phase (schedulers' per-phase tables)
ENV_ERROR = "swan_env_error"  # info key: the env raised (see EnvErrorToInfo)
_PIPE_ERRORS = (EOFError, BrokenPipeError, ConnectionResetError)  # a worker process died


class EnvWorkerError(RuntimeError):
    """An env raised inside a rollout, or an env worker process died: the rollout
    cannot go on. The message is one line naming the env and the cause."""


class EnvErrorToInfo(gym.Wrapper[Any, Any, Any, Any]):
    """An exception in the env's ``reset``/``step`` becomes an ended episode with
    ``info["swan_env_error"]`` (``"TypeName: message"``) and a placeholder observation:
    it crosses SB3's worker pipe and :func:`run_episodes` raises :class:`EnvWorkerError`
    (the worker used to die with a traceback and the parent to hang on its pipe)."""

    creation_error: str | None = None  # see _Unbuildable

    def _failed(self, e: Exception) -> tuple[Any, dict[str, Any]]:
        return self.observation_space.sample(), {ENV_ERROR: _one_line(e)}

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        try:
            return self.env.reset(**kwargs)
        except Exception as e:  # reported by run_episodes as one EnvWorkerError
            return self._failed(e)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        try:
            obs, reward, terminated, truncated, info = self.env.step(action)
        except Exception as e:  # reported by run_episodes as one EnvWorkerError
            obs, info = self._failed(e)
            return obs, 0.0, True, False, info
        return obs, float(reward), terminated, truncated, info


class ExpertLabels(gym.Wrapper[Any, Any, Any, Any]):
    """Adds ``info["expert_action"]``: the scripted expert's action for the observation
    just returned (DAgger labels), and ``info["phase"]``: the expert's task phase there
    (privileged: what a per-phase budget table in simulation reads). The expert reads
    the simulator, so it lives here, in the env's own process."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        from swan_envs.experts import make_expert

        self.expert = make_expert(env)

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        info[EXPERT_ACTION] = np.asarray(self.expert(obs), dtype=np.float32)
        info[PHASE] = str(getattr(self.expert, "phase", ""))
        return obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        info[EXPERT_ACTION] = np.asarray(self.expert(obs), dtype=np.float32)
        info[PHASE] = str(getattr(self.expert, "phase", ""))
        return obs, float(reward), terminated, truncated, info


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().replace("\n", " ")


class _Unbuildable(gym.Env[Any, Any]):
    """Stands in for an env that a worker process could not create (a bad kwarg, no GL
    context in the worker): :func:`make_vec_env` reads ``creation_error`` back and raises
    one :class:`EnvWorkerError` with it, where the worker used to die printing its
    traceback and the parent reported only that it died."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, error: str) -> None:
        self.creation_error = error

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        raise RuntimeError(self.creation_error)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        raise RuntimeError(self.creation_error)


def _env_factory(cfg: EnvConfig, labels: bool) -> Callable[[], gym.Env[Any, Any]]:
    def make() -> gym.Env[Any, Any]:
        worker = multiprocessing.parent_process() is not None
        if worker:
            # a worker: Ctrl-C is the trainer's to handle (it checkpoints, then closes us)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            env = make_env(cfg)
            return EnvErrorToInfo(ExpertLabels(env) if labels else env)
        except Exception as e:
            if not worker:
                raise
            return _Unbuildable(_one_line(e))  # reported by make_vec_env

    return make


def make_vec_env(cfg: EnvConfig, n: int, labels: bool = False) -> Any:
    """SB3 vector env of ``n`` copies (subprocesses when ``n > 1``); its ``close()``
    works after a worker died or an interrupted step."""
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    class _SubprocVecEnv(SubprocVecEnv):
        def close(self) -> None:
            # SB3's drains every pipe after an interrupted step: blocks on one already read
            if self.closed:
                return
            if self.waiting:
                for remote in self.remotes:
                    try:
                        if remote.poll(1.0):
                            remote.recv()
                    except Exception:  # noqa: S110  (a dead worker: nothing to drain)
                        pass
                self.waiting = False
            for remote in self.remotes:
                try:
                    remote.send(("close", None))
                except Exception:  # noqa: S110  (a dead worker)
                    pass
            for p in self.processes:
                p.join(timeout=5)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)
            self.closed = True

    if n < 1:
        raise ValueError(f"make_vec_env needs at least one env, got n={n}")
    fns = [_env_factory(cfg, labels) for _ in range(n)]
    if n == 1:
        return DummyVecEnv(fns)
    try:
        vec = _SubprocVecEnv(fns, start_method="forkserver")
    except _PIPE_ERRORS:
        raise EnvWorkerError(f"an env worker process for {cfg.id} died while starting") from None
    errors = [e for e in _vec_call(vec, "get_attr", "creation_error") if e]
    if errors:
        vec.close()
        raise EnvWorkerError(f"an env worker could not create {cfg.id}: {errors[0]}")
    return vec


def _vec_call(vec: Any, method: str, *args: Any) -> Any:
    """``vec.<method>(*args)``; a dead worker process becomes one :class:`EnvWorkerError`."""
    try:
        return getattr(vec, method)(*args)
    except _PIPE_ERRORS:
        deadline = time.monotonic() + 1.0  # let the dead worker's exit code arrive
        for p in getattr(vec, "processes", []):
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        codes = [p.exitcode for p in getattr(vec, "processes", [])]
        dead = [f"{i} (exit code {c})" for i, c in enumerate(codes) if c is not None]
        raise EnvWorkerError(
            f"an env worker process died during the rollout (worker {', '.join(dead) or '?'})"
        ) from None


def _raise_env_errors(infos: Sequence[Mapping[str, Any]], seeds: Sequence[int | None]) -> None:
    for info, s in zip(infos, seeds, strict=False):
        if ENV_ERROR in info:
            raise EnvWorkerError(f"the env raised in episode seed {s}: {info[ENV_ERROR]}")


@dataclass
class Episode:
    """One finished episode (``obs``/``expert_actions`` only when collecting).

    ``budgets`` and ``macs`` hold the budget and the executed MACs (gate networks
    included) of each step.
    """

    seed: int
    success: bool
    ret: float
    length: int
    budgets: list[float] = field(default_factory=list)
    macs: list[float] = field(default_factory=list)
    obs: dict[str, list[np.ndarray]] | None = None
    expert_actions: list[np.ndarray] | None = None

    @property
    def mean_budget(self) -> float:
        return float(np.mean(self.budgets)) if self.budgets else float("nan")

    @property
    def mean_macs(self) -> float:
        return float(np.mean(self.macs)) if self.macs else float("nan")


SchedulerSpec = Mapping[str, Any] | str


def run_episodes(
    policy: SwanPolicy,
    vec: Any,
    episodes: int,
    seed: int,
    budget: float = 1.0,
    collect: bool = False,
    beta: float = 0.0,
    rng: np.random.Generator | None = None,
    on_episode: Callable[[Episode], None] | None = None,
    scheduler: SchedulerSpec | Callable[[], Scheduler] | None = None,
    batched: bool = False,
) -> list[Episode]:
    """Play ``episodes`` episodes with the policy.

    With a ``scheduler``, every env has its own instance (reset at each episode start)
    that picks the budget of each of its steps from a :class:`StepInfo` (its
    observation, its previous action, the gate-score margin of its previous forward,
    the latency of that forward, the expert's phase when the vec env carries labels).
    The latency an env reports is its own batch-1 forward time (its group's with
    ``batched``); the deadline scheduler reacts to wall-clock time and is not
    reproducible run to run.

    Args:
        policy: acts on every env each step (deterministic).
        vec: an SB3 vector env (see :func:`make_vec_env`; ``labels=True`` if collecting).
        episodes: how many episodes; episode ``j`` starts from seed ``seed + j``.
        budget: the budget of every step. Ignored when ``scheduler`` is given.
        collect: keep the observations, and the expert's labels when the vec env
            carries them (DAgger; ``expert_actions`` stays empty otherwise).
        beta: probability of executing the expert's action instead (DAgger mixture).
        rng: randomness for the beta mixture.
        on_episode: called as each episode finishes (progress bars).
        scheduler: a scheduler config (see :func:`make_scheduler`) or a factory
            returning a fresh :class:`Scheduler`.
        batched: one forward per distinct budget over every env, finished ones
            included (faster with many workers; the actions then depend on the batch,
            see the module docstring). Otherwise each running env is forwarded alone,
            and the gate statistics count running envs' steps only.

    Raises:
        EnvWorkerError: an env raised in ``reset``/``step`` of a played episode, or an
            env worker process died.
    """
    n = vec.num_envs
    rng = rng or np.random.default_rng(seed)
    done_eps: list[Episode] = []
    scheds: list[Scheduler] | None = None
    if scheduler is not None:
        factory = scheduler if callable(scheduler) else (lambda: make_scheduler(scheduler))
        scheds = [factory() for _ in range(n)]
    for wave in range(math.ceil(episodes / n)):
        first = wave * n
        active = min(n, episodes - first)
        _vec_call(vec, "seed", seed + first)  # SB3 seeds env i with seed + first + i
        obs = _vec_call(vec, "reset")
        infos = list(vec.reset_infos)
        _raise_env_errors(infos[:active], [seed + first + i for i in range(active)])
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
        # per env: previous action, gate margin and forward latency (scheduler inputs)
        last_action: list[np.ndarray | None] = [None] * n
        margin = np.full(n, np.nan)
        latency = np.full(n, np.nan)
        for s in scheds or []:
            s.reset()
        while any(running):
            if scheds is not None:
                budgets = np.ones(n)
                for i in range(n):
                    if running[i]:
                        budgets[i] = scheds[i].budget(
                            StepInfo(
                                step=eps[i].length,
                                obs={k: v[i] for k, v in obs.items()},
                                action=last_action[i],
                                margin=None if np.isnan(margin[i]) else float(margin[i]),
                                latency_ms=None if np.isnan(latency[i]) else float(latency[i]),
                                phase=infos[i].get(PHASE),
                            )
                        )
                # finished envs still step with the others: give them a budget in use
                budgets[~np.array(running)] = budgets[running.index(True)]
            else:
                budgets = np.full(n, budget)
            live = None if batched else np.array(running)
            actions, step_macs, margin, latency = act_grouped(policy, obs, budgets, live)
            labelled = EXPERT_ACTION in infos[0]  # vec env made with labels=True
            if (collect and labelled) or beta > 0:
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
                    if labelled:
                        ep.expert_actions.append(expert[i].copy())
            last_action = [a.copy() for a in actions]
            obs, rewards, dones, step_infos = _vec_call(vec, "step", actions)
            _raise_env_errors(
                [step_infos[i] if running[i] else {} for i in range(active)],
                [e.seed for e in eps],
            )
            infos = [vec.reset_infos[i] if dones[i] else step_infos[i] for i in range(n)]
            for i in range(active):
                if not running[i]:
                    continue
                ep = eps[i]
                ep.ret += float(rewards[i])
                ep.length += 1
                ep.budgets.append(float(budgets[i]))
                ep.macs.append(float(step_macs[i]))
                if dones[i]:
                    ep.success = bool(step_infos[i].get("is_success", False))
                    running[i] = False
                    done_eps.append(ep)
                    if on_episode is not None:
                        on_episode(ep)
    return done_eps


def act_grouped(
    policy: SwanPolicy,
    obs: dict[str, np.ndarray],
    budgets: np.ndarray,
    live: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample budgets: one batched forward per distinct budget, or, with a ``live``
    mask, one batch-1 forward per live sample (its action then does not depend on the
    other samples; samples not live get a zero action, 0 MACs, NaN margin and latency).

    Returns:
        ``(actions [n, A], executed MACs [n], gate-score margin [n], latency ms [n])``;
        the margin is the mean ``|logit|`` over every gated unit (NaN without gates),
        the latency that of the forward that served the sample.
    """
    n = len(budgets)
    actions = np.zeros((n, policy.action_dim), dtype=np.float32)
    macs, margin, latency = np.zeros(n), np.full(n, np.nan), np.zeros(n)
    if live is None:
        groups = [np.flatnonzero(budgets == b) for b in np.unique(budgets)]
    else:
        latency[:] = np.nan
        groups = [np.array([i]) for i in np.flatnonzero(live)]
    for idx in groups:
        b = budgets[idx[0]]
        sub = obs if idx.size == n else {k: v[idx] for k, v in obs.items()}
        start = time.perf_counter()
        actions[idx] = act_batch(policy, sub, float(b))
        latency[idx] = (time.perf_counter() - start) * 1e3
        per_layer = list(policy.executed_macs().values())
        macs[idx] = torch.stack(per_layer).double().sum(0).cpu().numpy()
        logits = [g.last_logits for g in policy.gates().values()]
        if logits and all(t is not None for t in logits):
            margin[idx] = (
                torch.stack([t.abs().mean(1) for t in logits if t is not None]).mean(0).numpy()
            )
    return actions, macs, margin, latency


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
    """Evaluation of one budget (or scheduler).

    ``macs_per_step`` is the mean executed MACs per step over all steps (gate networks
    included); ``episode_mean_budget`` / ``episode_mean_macs`` hold each episode's own
    means and ``episode_success`` its outcome, in episode order (episode ``i`` is seed
    ``seed + i``, so two policies' lists pair episode by episode).
    """

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
    scheduler: dict[str, Any] | None = None
    episode_mean_budget: list[float] = field(default_factory=list)
    episode_mean_macs: list[float] = field(default_factory=list)
    episode_success: list[bool] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def scheduler_label(spec: Mapping[str, Any]) -> str:
    """Short row label of a scheduler config: ``adaptive 0.4 (action)``, ``deadline 5 ms``."""
    kind = spec.get("kind")
    if kind == "fixed":
        return f"budget {spec['budget']:g}"
    if kind == "adaptive":
        return f"adaptive {spec['target']:g} ({spec.get('signal', 'action')})"
    if kind == "deadline":
        return f"deadline {spec['deadline_ms']:g} ms"
    return str(kind)


def evaluate_policy(
    policy: SwanPolicy,
    env_cfg: EnvConfig,
    episodes: int,
    budgets: Sequence[float],
    workers: int = 1,
    seed: int = 10_000,
    on_episode: Callable[[Episode], None] | None = None,
    schedulers: Sequence[SchedulerSpec] = (),
) -> list[BudgetResult]:
    """Success, return, length, active fraction per layer and MACs/step per budget,
    then per scheduler (every row plays the same episodes).

    A per-phase schedule (``{"kind": "schedule", "phases": ...}``) reads the scripted
    expert's phase, so the envs then run with the expert attached.

    Raises:
        ValueError: ``episodes < 1`` or a budget outside ``(0, 1]`` (before any env
            starts).
        EnvWorkerError: an env raised, or an env worker process died.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    bad = [b for b in budgets if not 0.0 < b <= 1.0]  # NaN included
    if bad:
        raise ValueError(f"budgets must be in (0, 1], got {bad}")
    specs = [make_scheduler(s).spec() for s in schedulers]  # validate before any env starts
    probe = make_env(env_cfg)
    try:
        check_spaces(policy, probe)
    finally:
        probe.close()
    labels = any(s["kind"] == "schedule" and s["phases"] for s in specs)
    vec = make_vec_env(env_cfg, min(workers, episodes), labels=labels)
    results = []
    was_training = policy.training
    policy.eval()
    try:
        rows: list[tuple[str, float | None, dict[str, Any] | None]] = [
            (f"budget {b:g}", b, None) for b in budgets
        ]
        rows += [(scheduler_label(s), None, s) for s in specs]
        for label, b, spec in rows:
            policy.reset_gate_stats()
            if spec is None:
                assert b is not None
                # exactly b (not snapped to a ladder): the level set is b alone
                sched: SchedulerSpec | Callable[[], Scheduler] = partial(Fixed, b, (b,))
            else:
                sched = spec
            eps = run_episodes(policy, vec, episodes, seed, scheduler=sched, on_episode=on_episode)
            results.append(summarise(label, b, eps, policy, spec))
    finally:
        vec.close()
        policy.train(was_training)
    return results


def summarise(
    label: str,
    budget: float | None,
    eps: list[Episode],
    policy: SwanPolicy,
    scheduler: dict[str, Any] | None = None,
) -> BudgetResult:
    eps = sorted(eps, key=lambda e: e.seed)  # a wave's episodes finish in any order
    stats = policy.gate_stats()
    returns = np.array([e.ret for e in eps])
    all_budgets = [b for e in eps for b in e.budgets]
    all_macs = [m for e in eps for m in e.macs]
    macs = float(np.mean(all_macs)) if all_macs else float(sum(stats["macs_per_step"].values()))
    return BudgetResult(
        label=label,
        budget=budget,
        episodes=len(eps),
        success_rate=float(np.mean([e.success for e in eps])),
        return_mean=float(returns.mean()),
        return_std=float(returns.std()),
        length_mean=float(np.mean([e.length for e in eps])),
        mean_budget=float(np.mean(all_budgets)) if all_budgets else float("nan"),
        macs_per_step=macs,
        active_fraction={k: v["active_fraction"] for k, v in stats["layers"].items()},
        scheduler=scheduler,
        episode_mean_budget=[e.mean_budget for e in eps],
        episode_mean_macs=[e.mean_macs for e in eps],
        episode_success=[bool(e.success) for e in eps],
    )


def plot_tradeoff(
    results: Sequence[BudgetResult], dense_macs: float, path: Path, title: str = ""
) -> Path:
    """PNG of success rate vs mean executed MACs per step (% of the dense model):
    fixed budgets as a line, schedulers as labelled points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    fixed = sorted((r for r in results if r.scheduler is None), key=lambda r: r.macs_per_step)
    if fixed:
        xs = [100 * r.macs_per_step / dense_macs for r in fixed]
        ax.plot(xs, [100 * r.success_rate for r in fixed], "o-", label="fixed budget")
        for r, x in zip(fixed, xs, strict=True):
            ax.annotate(
                f"b={r.budget:g}",
                (x, 100 * r.success_rate),
                fontsize=8,
                xytext=(4, -10),
                textcoords="offset points",
            )
    markers = "s^vD<>P*X"
    for i, r in enumerate(r for r in results if r.scheduler is not None):
        ax.plot(
            100 * r.macs_per_step / dense_macs,
            100 * r.success_rate,
            markers[i % len(markers)],
            label=f"{r.label} (mean b {r.mean_budget:.2f})",
        )
    ax.set_xlabel("mean executed MACs per step (% of dense)")
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def record_video(
    policy: SwanPolicy,
    env_cfg: EnvConfig,
    path: Path,
    seed: int,
    budget: float = 1.0,
    fps: int = 20,
) -> int:
    """Roll out one episode in this process and write its rendered frames (imageio).

    Raises:
        ValueError: the env renders no ``rgb_array`` frames.
        OSError: ``path`` cannot be written.
    """
    import imageio.v2 as imageio

    env = make_env(env_cfg, render_mode="rgb_array")

    def render() -> np.ndarray:
        frame = env.render()
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"{env_cfg.id} renders no rgb_array frames")
        return frame

    try:
        check_spaces(policy, env)
        obs, _ = env.reset(seed=seed)
        frames = [render()]
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(policy.act(obs, budget))
            frames.append(render())
            done = terminated or truncated
    finally:
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(path, [np.asarray(f) for f in frames], fps=fps, macro_block_size=1)
    return len(frames)

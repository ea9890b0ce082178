"""RL runs: ``swan train`` for methods ``ppo``, ``sac`` and ``distill`` (issue 5).

A run directory has the imitation layout (DESIGN.md §8), so ``swan eval``, compaction and
export read an RL run unchanged::

    runs/<name>/config.yaml                    resolved config
                metrics.jsonl, tb/             SB3's logger: JSON lines + TensorBoard
                checkpoints/step_<n>/          n = env steps
                    model.safetensors, config.json   the SwanPolicy (VecNormalize folded in)
                    optimizer.safetensors            RNG streams
                    trainer_state.json               step, SB3 counters, optimiser metadata
                    sb3_state.safetensors            SB3 policy (actor + critics) + optimisers
                    vecnormalize.json                VecNormalize statistics (if used)
                    replay_buffer.safetensors        SAC's replay buffer (newest only)
                checkpoints/last, best/
                teacher/                       method 'distill': the teacher's own RL run

Nothing here unpickles (RELIABILITY.md row 1): SB3 ``.zip`` files are never written or
read; resume rebuilds the model from the config and loads tensors and JSON. Resume
continues from the checkpoint's weights, optimiser states, counters, normaliser
statistics and RNG streams, but starts fresh episodes (SB3 keeps no env state), so an RL
run resumed at step k is not bit-identical to one that ran straight through.

Checkpoints are taken when a rollout starts (the policy then reflects every update on the
steps counted so far). Ctrl-C stops at the next env step; the partial rollout is dropped
and the checkpoint holds the last complete one, with the VecNormalize statistics of that
moment (exit 130, resumable).
"""

from __future__ import annotations

import json
import multiprocessing
import signal
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from swan_policy.config import ConfigError, EnvConfig, ExperimentConfig, dump_config, load_config
from swan_policy.envs import make_env, resolve_policy_config
from swan_policy.evaluate import evaluate_policy
from swan_policy.serialization import (
    CheckpointError,
    load_json,
)
from swan_policy.spec import PROPRIO
from swan_policy.train.checkpoint import (
    latest_checkpoint,
)
from swan_policy.train.rl import (
    GateStatsCallback,
    SwanActorCriticPolicy,
    SwanSACPolicy,
    extract_swan_policy,
)
from swan_policy.train.rl_checkpoint import (
    restore_rl_checkpoint,
    save_rl_checkpoint,
    vecnormalize_state,
)
from swan_policy.train.runtime import (
    TrainingError,
    TrainingInterrupted,
    eval_record,
    graceful_interrupt,
)

# keys of rl.hyperparams that the run itself sets
RESERVED = (
    "policy",
    "env",
    "seed",
    "policy_kwargs",
    "tensorboard_log",
    "verbose",
    "_init_setup_model",
)


# ----------------------------------------------------------------------------- envs
def _make_worker_env(cfg: EnvConfig) -> gym.Env[Any, Any]:
    if multiprocessing.parent_process() is not None:
        # a worker: Ctrl-C is the trainer's to handle (it checkpoints, then closes us)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return make_env(cfg)


def _has_hwc_image(space: gym.Space[Any]) -> bool:
    """Whether SB3 would wrap an env of this observation space in VecTransposeImage."""
    parts = space.spaces.values() if isinstance(space, gym.spaces.Dict) else [space]
    return any(
        isinstance(s, gym.spaces.Box) and is_image_space(s) and not is_image_space_channels_first(s)
        for s in parts
    )


def make_rl_env(cfg: ExperimentConfig) -> VecEnv:
    """``rl.n_envs`` copies of the env (SubprocVecEnv if ``rl.subproc`` and n > 1), with
    episode statistics (VecMonitor), CHW images (VecTransposeImage) and, if
    ``rl.normalize``, VecNormalize on proprio."""
    rl = cfg.rl
    fns: list[Callable[[], gym.Env[Any, Any]]] = [
        partial(_make_worker_env, cfg.env) for _ in range(rl.n_envs)
    ]
    base: VecEnv = (
        SubprocVecEnv(fns, start_method="forkserver")
        if rl.subproc and rl.n_envs > 1
        else DummyVecEnv(fns)
    )
    env: VecEnv = VecMonitor(base)
    if _has_hwc_image(env.observation_space):
        # Transpose *under* VecNormalize: SB3 would add VecTransposeImage on top of it, and
        # SAC stores VecNormalize.get_original_obs() (then HWC) in a CHW replay buffer.
        env = VecTransposeImage(env)
    if rl.normalize:
        env = VecNormalize(
            env,
            norm_obs=True,
            norm_reward=rl.norm_reward,
            norm_obs_keys=[PROPRIO],  # never the pixels
            gamma=float(rl.hyperparams.get("gamma", 0.99)),
        )
    return env


# ----------------------------------------------------------------------------- the model
def policy_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    """SB3 ``policy_kwargs`` of the config's SWAN policy class."""
    rl = cfg.rl
    kwargs: dict[str, Any] = {
        "policy_config": cfg.policy.model_dump(mode="json"),
        "critic_hidden": list(rl.critic_hidden),
        "critic_gated": rl.critic_gated,
        "critic_sparsity_weight": rl.critic_sparsity_weight,
        "sandwich": (
            {
                "b_min": rl.b_min,
                "n_random_budgets": rl.n_random_budgets,
                "budget_levels": list(rl.budget_levels),
                "distill_weight": rl.distill_weight,
            }
            if rl.sandwich
            else None
        ),
    }
    if cfg.method == "ppo":
        kwargs.update(
            share_features_extractor=rl.share_features_extractor,
            log_std_init=rl.log_std_init,
            ortho_init=rl.ortho_init,
        )
    return kwargs


def build_model(cfg: ExperimentConfig, env: VecEnv) -> BaseAlgorithm:
    """SB3's PPO or SAC with the SWAN policy class (errors name ``rl.hyperparams``)."""
    if cfg.method not in ("ppo", "sac"):
        raise ConfigError(f"method: expected 'ppo' or 'sac' for RL, got {cfg.method!r}")
    bad = sorted(set(cfg.rl.hyperparams) & set(RESERVED))
    if bad:
        raise ConfigError(f"rl.hyperparams: {bad} are set by the run itself")
    algo: type[BaseAlgorithm] = PPO if cfg.method == "ppo" else SAC
    policy_cls = SwanActorCriticPolicy if cfg.method == "ppo" else SwanSACPolicy
    try:
        return algo(
            policy_cls,
            env,
            policy_kwargs=policy_kwargs(cfg),
            seed=cfg.seed,
            verbose=0,
            **cfg.rl.hyperparams,
        )
    except TypeError as e:  # an unknown SB3 keyword
        raise ConfigError(f"rl.hyperparams: {e}") from None


# ----------------------------------------------------------------------------- logging
class JsonLinesWriter(KVWriter):
    """SB3 logger output: one JSON line per dump in ``metrics.jsonl`` (numbers only)."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "a")  # noqa: SIM115  (closed by close())

    def write(
        self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0
    ) -> None:
        kind = "eval" if any(k.startswith("eval/") for k in key_values) else "train"
        record: dict[str, Any] = {"step": int(step), "kind": kind}
        for k, v in key_values.items():
            if isinstance(v, bool | int | float | np.floating | np.integer):
                record[k] = float(v) if isinstance(v, float | np.floating) else int(v)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _RunCallback(BaseCallback):
    """Checkpoints and evaluations at rollout starts, Ctrl-C, progress."""

    def __init__(
        self,
        run: RLRun,
        flag: dict[str, bool],
        progress: Any,
        task: Any,
    ) -> None:
        super().__init__()
        self.run = run
        self.flag = flag
        self.progress = progress
        self.task = task
        self.consistent_step = run.start_step
        self.consistent_vecnorm: dict[str, Any] | None = None

    def _on_rollout_start(self) -> None:
        step = self.num_timesteps
        self.consistent_step = step
        vn = self.model.get_vec_normalize_env()
        # VecNormalize updates its statistics on every env step: keep the ones at the
        # boundary for a Ctrl-C checkpoint, which drops the partial rollout
        self.consistent_vecnorm = vecnormalize_state(vn) if vn is not None else None
        self.run.maybe_checkpoint_and_eval(self.model, step)

    def _on_step(self) -> bool:
        self.progress.update(self.task, completed=self.num_timesteps)
        return not self.flag["stop"]


class RLRun:
    """One RL run: config, directory, cadence of checkpoints and evaluations."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, console: Any) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.console = console
        self.start_step = 0
        self.best: float | None = None
        self.last_ckpt: Path | None = None
        self.last_ckpt_step = 0
        self.last_eval_step = 0
        self.logger: Logger | None = None
        self.formats: list[KVWriter] = []

    def checkpoint(
        self, model: BaseAlgorithm, step: int, vecnorm: dict[str, Any] | None = None
    ) -> Path:
        self.last_ckpt = save_rl_checkpoint(
            self.run_dir, model, step, self.best, self.cfg.rl.save_replay_buffer, vecnorm
        )
        self.last_ckpt_step = step
        return self.last_ckpt

    def evaluate(self, model: BaseAlgorithm, step: int) -> None:
        ev = self.cfg.eval
        policy = extract_swan_policy(model)
        results = evaluate_policy(
            policy, self.cfg.env, ev.episodes, ev.budgets, ev.workers, ev.seed
        )
        # straight to the outputs: SB3's logger may hold train values not dumped yet
        record = {k: v for k, v in eval_record(step, results).items() if k.startswith("eval/")}
        for fmt in self.formats:
            if isinstance(fmt, TensorBoardOutputFormat):
                tb = {k.replace("@", "_at_"): v for k, v in record.items()}
                fmt.write(tb, {k: () for k in tb}, step)
            else:
                fmt.write(record, {k: () for k in record}, step)
        line = ", ".join(
            f"b={r.budget:g}: return {r.return_mean:.2f}, success {r.success_rate:.0%}"
            for r in results
        )
        self.console.print(f"step {step}: eval {line}")
        metric = results[0].return_mean  # RL: the return at the first budget
        if self.best is None or metric > self.best:
            self.best = metric
            policy.save_pretrained(self.run_dir / "best")
        self.last_eval_step = step

    def maybe_checkpoint_and_eval(self, model: BaseAlgorithm, step: int) -> None:
        if step <= self.start_step:
            return
        every = self.cfg.eval.every
        if every and step - self.last_eval_step >= every:
            self.evaluate(model, step)
        if step - self.last_ckpt_step >= self.cfg.log.checkpoint_every:
            self.checkpoint(model, step)


def _non_finite_error(model: BaseAlgorithm, error: ValueError) -> TrainingError | None:
    """A ValueError out of ``learn()`` as the TrainingError of NaN/Inf (None: unrelated).

    Non-finite weights surface first as torch's argument check of SB3's ``Normal(loc=NaN)``
    in the next rollout, unless a checkpoint (:func:`save_rl_checkpoint`) is due before it.
    """
    step = model.num_timesteps
    if not all(torch.isfinite(p).all() for p in model.policy.parameters()):
        return TrainingError(f"non-finite parameters at step {step}")
    if "found invalid values" in str(error):  # torch.distributions' check: a NaN output
        return TrainingError(f"non-finite policy outputs at step {step}")
    return None


def train_rl(cfg: ExperimentConfig, run_dir: Path, resume: bool = False, show: bool = True) -> Path:
    """Train a SWAN policy with SB3 PPO or SAC; returns the final checkpoint directory.

    Raises:
        TrainingInterrupted: after Ctrl-C (a checkpoint was written first).
        TrainingError: parameters became non-finite (the last good checkpoint is kept).
        ConfigError / CheckpointError: bad settings, or a checkpoint that does not fit.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(quiet=not show)
    torch.set_num_threads(cfg.rl.torch_threads)
    probe = make_env(cfg.env)
    try:
        cfg = cfg.model_copy(update={"policy": resolve_policy_config(cfg.policy, probe)})
    finally:
        probe.close()
    ckpt = latest_checkpoint(run_dir) if resume else None
    env = make_rl_env(cfg)
    run = RLRun(cfg, run_dir, console)
    try:
        model = build_model(cfg, env)
        if ckpt is not None:
            state = restore_rl_checkpoint(model, ckpt)
            run.start_step = run.last_ckpt_step = run.last_eval_step = state.step
            run.best, run.last_ckpt = state.best_metric, ckpt
            env.seed(cfg.seed + state.step)  # fresh episodes, not the first ones again
            console.print(f"resumed from {ckpt} at step {state.step}")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_config(cfg))
        run.formats = [JsonLinesWriter(run_dir / "metrics.jsonl")]
        if cfg.log.tensorboard:
            run.formats.append(TensorBoardOutputFormat(str(run_dir / "tb")))
        run.logger = Logger(str(run_dir), run.formats)
        model.set_logger(run.logger)
        total = cfg.rl.total_timesteps
        with (
            graceful_interrupt() as flag,
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TimeRemainingColumn(),
                console=console,
                disable=not show,
            ) as progress,
        ):
            task = progress.add_task(cfg.method, total=total, completed=run.start_step)
            callback = _RunCallback(run, flag, progress, task)
            t0 = time.perf_counter()
            if run.start_step < total:
                try:
                    model.learn(
                        total - run.start_step,
                        callback=[GateStatsCallback(), callback],
                        log_interval=cfg.rl.log_interval,
                        reset_num_timesteps=ckpt is None,
                    )
                except ValueError as e:
                    if (nan := _non_finite_error(model, e)) is None:
                        raise
                    raise nan from e
            if flag["stop"]:
                last = run.checkpoint(model, callback.consistent_step, callback.consistent_vecnorm)
                console.print(f"interrupted: checkpoint {last}; resume with --resume")
                raise TrainingInterrupted()
        steps = model.num_timesteps - run.start_step
        console.print(f"{steps} env steps in {time.perf_counter() - t0:.0f} s")
        if cfg.eval.at_end:
            run.evaluate(model, model.num_timesteps)
        return run.checkpoint(model, model.num_timesteps)
    except TrainingError as e:
        raise TrainingError(
            f"{e}; stopped. Last good checkpoint: {run.last_ckpt or 'none'}"
        ) from None
    finally:
        if run.logger is not None:
            run.logger.close()
        env.close()


# ----------------------------------------------------------------------------- distillation
def run_is_finished(run_dir: Path, total_timesteps: int) -> bool:
    """Whether an RL run's last checkpoint reached ``total_timesteps``."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return False
    return int(load_json(ckpt / "trainer_state.json")["step"]) >= total_timesteps


def run_policy_dir(run_dir: Path) -> Path:
    """The policy directory of a finished run: ``best/`` if any, else the last checkpoint."""
    if (run_dir / "best" / "model.safetensors").is_file():
        return run_dir / "best"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"{run_dir}: no policy (neither best/ nor a checkpoint)")
    return ckpt


def prepare_teacher(cfg: ExperimentConfig, run_dir: Path, show: bool = True) -> Path:
    """The teacher's policy directory: ``rl.teacher.run``'s, or trained (or resumed) into
    ``<run>/teacher`` from ``rl.teacher.config``."""
    teacher = cfg.rl.teacher
    if teacher.run is not None:
        return run_policy_dir(Path(teacher.run))
    assert teacher.config is not None
    tcfg = load_config(teacher.config)
    if tcfg.method not in ("ppo", "sac"):
        raise ConfigError(f"rl.teacher.config: {teacher.config} must be a ppo or sac config")
    tcfg = tcfg.model_copy(update={"rl": tcfg.rl.model_copy(update={"n_envs": cfg.rl.n_envs})})
    tdir = run_dir / "teacher"
    if not run_is_finished(tdir, tcfg.rl.total_timesteps):
        resume = latest_checkpoint(tdir) is not None
        train_rl(tcfg, tdir, resume=resume, show=show)
    return run_policy_dir(tdir)


def train_distill(
    cfg: ExperimentConfig, run_dir: Path, resume: bool = False, show: bool = True
) -> Path:
    """Teacher -> student: a state-based RL teacher labels the pixel student's states (DAgger).

    The teacher (a SwanPolicy on ``obs_mode="state"`` observations) runs inside each env
    worker and reads ``env.unwrapped.state_observation()``; the student starts from
    ``demos.episodes`` teacher episodes, then runs ``dagger.rounds`` rounds.
    """
    from swan_policy.train import imitation
    from swan_policy.train.labellers import teacher_labeller

    teacher_dir = prepare_teacher(cfg, run_dir, show)
    labeller = teacher_labeller(teacher_dir)
    student_resume = resume and latest_checkpoint(run_dir) is not None
    return imitation.train(cfg, run_dir, resume=student_resume, show=show, labeller=labeller)

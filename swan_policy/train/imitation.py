"""Imitation learning: behaviour cloning with the sandwich rule, then DAgger rounds.

:func:`train` runs a whole imitation run: demos, the policy (fresh, from ``init_policy``
or from the last checkpoint), BC steps with DAgger rounds at their boundaries, logging,
evaluation, checkpoints, resume and Ctrl-C handling. Its parts live beside it:
:mod:`swan_policy.train.bc` (the samples and one gradient step),
:mod:`swan_policy.train.dagger` (one round of roll out -> label -> aggregate) and
:mod:`swan_policy.train.runtime` (what RL runs share: distributed context, Ctrl-C, errors).

The labeller is the scripted expert by default; method ``distill`` (issue 5) passes a
:func:`teacher_labeller`: a trained state-based SwanPolicy that labels the student's states
from the env's privileged state, and whose own episodes replace the demo file.

Multi-process training uses torch.distributed DDP when launched by ``torchrun``
(gloo on CPU, nccl on GPU): each rank samples its own batches, gradients are averaged
by DDP, rank 0 logs, evaluates and checkpoints.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
from rich.console import Console
from torch import nn

from swan_policy.config import ExperimentConfig, dump_config, resume_changes
from swan_policy.envs import make_env, resolve_policy_config
from swan_policy.evaluate import evaluate_policy
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import atomic_write, save_tensors
from swan_policy.train.bc import (
    BCData,
    SandwichLoss,
    bc_update,
    load_bc_data,
    load_labelled,
    lr_lambda,
    make_optimizer,
)
from swan_policy.train.checkpoint import (
    Checkpoint,
    TrainerState,
    gather_rng,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    start_record,
)
from swan_policy.train.dagger import dagger_round, round_boundaries, teacher_demos, total_steps
from swan_policy.train.labellers import Labeller

# Re-exported: they lived here before the labellers got their own module.
from swan_policy.train.labellers import TeacherLabels as TeacherLabels
from swan_policy.train.labellers import teacher_labeller as teacher_labeller
from swan_policy.train.runtime import (
    RunContext,
    TrainingError,
    TrainingInterrupted,
    any_rank,
    eval_record,
    graceful_interrupt,
    init_process,
)


def _seed_process(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (legacy stream used by SB3 helpers)
    random.seed(seed)  # checkpoints save this stream too: make it the seed's


def _ensure_demos(cfg: ExperimentConfig, path: Path, show: bool, console: Console) -> None:
    """Collect ``demos.episodes`` expert episodes into ``path`` unless it exists."""
    if path.exists():
        return
    from swan_policy.data.demos import collect_demos

    console.print(f"collecting {cfg.demos.episodes} expert demos -> {path}")
    collect_demos(
        cfg.env.id or "",
        cfg.demos.episodes,
        path,
        workers=cfg.demos.workers,
        seed=cfg.seed,
        env_kwargs=cfg.env.kwargs,
        progress=show,
        only_success=cfg.demos.only_success,
    )


class _ImitationRun:
    """One call of :func:`train`: its state, and the steps it takes in order."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        ctx: RunContext,
        device: torch.device,
        show: bool,
        labeller: Labeller | None,
    ) -> None:
        self.cfg, self.ctx, self.device, self.show, self.labeller = cfg, ctx, device, show, labeller
        self.run_dir = ctx.run_dir
        self.console = Console(quiet=not (show and ctx.main))
        env = make_env(cfg.env)
        self.policy_cfg = resolve_policy_config(cfg.policy, env)
        box = env.action_space
        assert isinstance(box, gym.spaces.Box)  # resolve_policy_config refuses anything else
        self.low, self.high = box.low, box.high
        env.close()
        self.writer: Any = None

    # --- data ---------------------------------------------------------------------------
    def load_data(self, extra_data: Sequence[Path]) -> BCData:
        """The demos (collected or, for distillation, the teacher's episodes first), then
        ``extra_data``; :attr:`demo_proprio` keeps the demos' proprio for normalisation."""
        cfg, ctx = self.cfg, self.ctx
        demo_path = Path(cfg.demos.path)
        if self.labeller is not None:
            demo_path = self.run_dir / "dagger" / "round_0.safetensors"
            if ctx.main:
                teacher_demos(self.policy_cfg, cfg, self.labeller, demo_path, self.show)
        elif ctx.main:
            _ensure_demos(cfg, demo_path, self.show, self.console)
        if ctx.world > 1:
            dist.barrier()
        data = (
            load_labelled(demo_path)
            if self.labeller is not None
            else load_bc_data(demo_path, cfg.env)
        )
        self.demo_proprio = data.proprio  # normalisation statistics: the demos alone
        for path in extra_data:  # before any DAgger round: the same order when resumed
            data.append(load_labelled(path))
        return data

    # --- the policy ---------------------------------------------------------------------
    def start_policy(
        self,
        ckpt: Path | None,
        data: BCData,
        init_policy: SwanPolicy | None,
    ) -> tuple[SwanPolicy, TrainerState, Checkpoint | None, list[str]]:
        """The checkpoint's policy and state (and its rounds' samples appended to
        ``data``), or a fresh or given policy normalised by the demos."""
        if ckpt is None:
            policy = init_policy if init_policy is not None else SwanPolicy(self.policy_cfg)
            if init_policy is not None:  # its architecture, this run's sparsity weight
                gate = policy.config.gate.model_copy(
                    update={"sparsity_weight": self.policy_cfg.gate.sparsity_weight}
                )
                policy.config = policy.config.model_copy(update={"gate": gate})
            proprio = self.demo_proprio
            std = proprio.std(0)
            policy.set_normalization(
                proprio.mean(0), torch.where(std > 1e-6, std, 1.0), self.low, self.high
            )
            return policy, TrainerState(), None, []
        loaded = load_checkpoint(ckpt)
        changes: list[str] = []
        if init_policy is None:  # the checkpoint's architecture is the one trained on
            resolved = self.cfg.model_copy(update={"policy": self.policy_cfg})
            changes = resume_changes(self.run_dir / "config.yaml", resolved, loaded.policy.config)
        else:  # what init_policy froze (a slimmable's gates) stays frozen
            for p, q in zip(loaded.policy.parameters(), init_policy.parameters(), strict=True):
                p.requires_grad_(q.requires_grad)
        for r in range(1, int(loaded.state.extras.get("dagger_rounds_done", 0)) + 1):
            data.append(load_labelled(self.run_dir / "dagger" / f"round_{r}.safetensors"))
        return loaded.policy, loaded.state, loaded, changes

    def write_start(
        self, policy: SwanPolicy, state: TrainerState, resumed: bool, changes: list[str]
    ) -> None:
        """The run's ``config.yaml`` (the architecture actually trained) and its
        ``kind: start`` line."""
        if not self.ctx.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for line in changes:  # a resume with other settings (e.g. more DAgger rounds)
            self.console.print(f"resumed with a changed setting: {line}")
        text = dump_config(self.cfg.model_copy(update={"policy": policy.config}))
        # atomic: on a resume the other ranks may be reading it (resume_changes)
        atomic_write(self.run_dir / "config.yaml", lambda p: p.write_text(text))
        start = start_record(
            state.step, resumed, self.cfg.seed, self.ctx.world, self.device, self.cfg.bc.compile
        )
        if changes:
            start["changed"] = changes
        self.ctx.log(None, start)  # no TensorBoard scalars for the start line

    # --- what the loop calls ------------------------------------------------------------
    def setup(self, policy: SwanPolicy, loaded: Checkpoint | None, state: TrainerState) -> None:
        """Loss module (DDP-wrapped on several ranks), AdamW and its schedule (restored
        with the RNG streams on resume) and the TensorBoard writer."""
        cfg = self.cfg
        self.policy, self.state = policy, state
        loss_module: nn.Module = SandwichLoss(
            policy,
            policy.config.gate.sparsity_weight,
            cfg.bc.distill_weight,
            cfg.bc.low_weight,
            compile=cfg.bc.compile,
        )
        if self.ctx.world > 1:
            loss_module = nn.parallel.DistributedDataParallel(loss_module)
        self.loss_module = loss_module
        self.optimizer = make_optimizer(policy, cfg)
        self.n_total = total_steps(cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, self.n_total)
        )
        if loaded is not None:
            if loaded.optimizer_state is not None:
                self.optimizer.load_state_dict(loaded.optimizer_state)
            if loaded.scheduler_state is not None:
                self.scheduler.load_state_dict(loaded.scheduler_state)
            if not loaded.restore_rng(self.ctx.rank):
                # saved by fewer ranks: a stream of this rank's own, not rank 0's copy
                _seed_process(cfg.seed + self.ctx.rank + 1_000_003 * state.step)
                self.console.print(
                    f"rank {self.ctx.rank}: the checkpoint has no random state for this "
                    "rank (saved by fewer processes); reseeded"
                )
        if self.ctx.main and cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))

    def checkpoint(self) -> Path | None:
        """Rank 0 writes the checkpoint; every rank must call this (its random streams
        are gathered into it)."""
        rank_rng = gather_rng() if self.ctx.world > 1 else []
        if not self.ctx.main:
            return None
        return save_checkpoint(
            self.run_dir, self.policy, self.optimizer, self.state, self.scheduler, rank_rng=rank_rng
        )

    def evaluate(self) -> None:
        """Evaluate every ``eval.budgets`` (rank 0); a better mean success saves ``best``."""
        if not self.ctx.main:
            return
        ev, policy, state = self.cfg.eval, self.policy, self.state
        results = evaluate_policy(
            policy, self.cfg.env, ev.episodes, ev.budgets, ev.workers, ev.seed
        )
        policy.train()
        self.ctx.log(self.writer, eval_record(state.step, results))
        metric = float(np.mean([r.success_rate for r in results]))
        line = ", ".join(f"b={r.budget:g}: {r.success_rate:.0%}" for r in results)
        self.console.print(f"step {state.step}: eval success {line}")
        if state.best_metric is None or metric > state.best_metric:
            state.best_metric = metric
            policy.save_pretrained(self.run_dir / "best")

    def dagger(self, r: int, data: BCData) -> None:
        """Round ``r``: rank 0 collects and saves it; every rank appends it to ``data``."""
        path = self.run_dir / "dagger" / f"round_{r}.safetensors"
        if self.ctx.main:
            new, success = dagger_round(self.policy, self.cfg, r, labeller=self.labeller)
            save_tensors(path, new.tensors())
            record = {
                "step": self.state.step,
                "kind": "dagger",
                "round": r,
                "rollout_success": success,
                "new_samples": len(new),
            }
            self.ctx.log(self.writer, record)
            self.console.print(
                f"dagger round {r}: rollout success {success:.0%}, +{len(new)} labelled samples"
            )
        if self.ctx.world > 1:
            dist.barrier()
        data.append(load_labelled(path))
        self.state.extras["dagger_rounds_done"] = r

    def loop(self, data: BCData, last_ckpt: Path | None) -> Path | None:
        """BC steps up to the run's total, each DAgger round at its boundary, logs every
        ``log_every``, checkpoints every ``checkpoint_every`` and at Ctrl-C."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        cfg, ctx, state = self.cfg, self.ctx, self.state
        boundaries = round_boundaries(cfg)
        with (
            graceful_interrupt() as flag,
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
                disable=not (self.show and ctx.main),
            ) as progress,
        ):
            task = progress.add_task("train", total=self.n_total, completed=state.step, status="")
            t0, samples = time.perf_counter(), 0
            while state.step < self.n_total:
                done_rounds = int(state.extras.get("dagger_rounds_done", 0))
                if done_rounds < len(boundaries) and state.step >= boundaries[done_rounds]:
                    progress.update(task, description=f"dagger round {done_rounds + 1}")
                    self.dagger(done_rounds + 1, data)
                    progress.update(task, description="train")
                try:
                    info = bc_update(self.loss_module, self.optimizer, self.scheduler, data, cfg)
                except TrainingError as e:
                    raise TrainingError(
                        f"{e} at step {state.step}; stopped. Last good checkpoint: "
                        f"{last_ckpt or 'none'}"
                    ) from None
                state.step += 1
                samples += cfg.bc.batch_size * ctx.world
                if state.step % cfg.log.log_every == 0 or state.step == self.n_total:
                    elapsed = time.perf_counter() - t0
                    info.update(step=state.step, kind="train", samples_per_s=samples / elapsed)
                    if ctx.main:
                        ctx.log(self.writer, info)
                    t0, samples = time.perf_counter(), 0
                    progress.update(
                        task,
                        status=(
                            f"loss {info['loss']:.4f} active {info['active_fraction']:.2f} "
                            f"{info['samples_per_s']:.0f} samples/s"
                        ),
                    )
                progress.update(task, completed=state.step)
                if (
                    cfg.eval.every
                    and state.step % cfg.eval.every == 0
                    and state.step < self.n_total
                ):
                    self.evaluate()
                if state.step % cfg.log.checkpoint_every == 0:
                    last_ckpt = self.checkpoint() or last_ckpt
                if any_rank(flag["stop"]):  # all ranks stop at the same step
                    last_ckpt = self.checkpoint() or last_ckpt
                    self.console.print(f"interrupted: checkpoint {last_ckpt}; resume with --resume")
                    raise TrainingInterrupted()
        return last_ckpt


def train(
    cfg: ExperimentConfig,
    run_dir: Path,
    resume: bool = False,
    show: bool = True,
    labeller: Labeller | None = None,
    init_policy: SwanPolicy | None = None,
    extra_data: Sequence[Path] = (),
) -> Path:
    """Train a gated policy by BC (+ DAgger); returns the final checkpoint directory.

    With a ``labeller`` (method ``distill``) the demonstrations are the labeller's own
    episodes (:func:`teacher_demos`) and it labels the DAgger rounds.

    ``init_policy`` starts training from that policy (its architecture replaces
    ``cfg.policy``; fine-tuning, and the baselines of ``swan_policy.baselines``) instead of
    a freshly initialised one; its observation normalisation is recomputed from the demos.

    ``extra_data``: labelled samples (``pixels``/``proprio``/``actions`` safetensors, e.g.
    another run's ``dagger/round_<r>.safetensors``) trained on beside the demos. The
    observation normalisation is still computed from the demos alone.

    Raises:
        TrainingInterrupted: after Ctrl-C (a checkpoint was written first).
        TrainingError: the loss became non-finite (the last good checkpoint is kept).
    """
    ctx, device = init_process(run_dir)
    _seed_process(cfg.seed + ctx.rank)
    run = _ImitationRun(cfg, ctx, device, show, labeller)
    data = run.load_data(extra_data)
    ckpt = latest_checkpoint(run_dir) if resume else None
    policy, state, loaded, changes = run.start_policy(ckpt, data, init_policy)
    policy.to(device).train()
    run.write_start(policy, state, ckpt is not None, changes)
    run.setup(policy, loaded, state)
    if ckpt is not None:
        run.console.print(f"resumed from {ckpt} at step {state.step}")
    last_ckpt = run.loop(data, ckpt)
    if cfg.eval.at_end:
        run.evaluate()
    final = run.checkpoint() or last_ckpt
    if run.writer is not None:
        run.writer.close()
    if ctx.world > 1:
        dist.barrier()
    assert final is not None or not ctx.main
    return final or run_dir

"""Imitation learning: behaviour cloning with the sandwich rule, then DAgger rounds.

Read top to bottom: :func:`bc_update` is one gradient step; :func:`dagger_round` is one
round of roll out -> label with the expert -> aggregate; :func:`train` runs BC and the
rounds with logging, evaluation, checkpoints, resume and Ctrl-C handling.

The labeller is the scripted expert by default; method ``distill`` (issue 5) passes a
:func:`teacher_labeller`: a trained state-based SwanPolicy that labels the student's states
from the env's privileged state, and whose own episodes replace the demo file.

Multi-process training uses torch.distributed DDP when launched by ``torchrun``
(gloo on CPU, nccl on GPU): each rank samples its own batches, gradients are averaged
by DDP, rank 0 logs, evaluates and checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from swan_policy.config import ExperimentConfig, dump_config, resume_changes
from swan_policy.data.augment import random_colour_mix, random_shift
from swan_policy.envs import make_env, resolve_policy_config
from swan_policy.evaluate import (
    BudgetResult,
    Episode,
    evaluate_policy,
    run_episodes,
)
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import load_tensors, save_tensors
from swan_policy.spec import PIXELS, PROPRIO
from swan_policy.train.checkpoint import (
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    start_record,
)
from swan_policy.train.labellers import Labeller, labelled_vec_env

# Re-exported: they lived here before the labellers got their own module.
from swan_policy.train.labellers import TeacherLabels as TeacherLabels
from swan_policy.train.labellers import teacher_labeller as teacher_labeller
from swan_policy.train.losses import CompiledForward, bc_sandwich_loss, sandwich_budgets


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss became NaN)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C: a checkpoint was written; the run can be resumed."""


# ----------------------------------------------------------------------------- data
@dataclass
class BCData:
    """Training samples in memory: uint8 pixels, float proprio, env-unit actions."""

    pixels: Tensor
    proprio: Tensor
    actions: Tensor

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    def append(self, other: BCData) -> None:
        self.pixels = torch.cat([self.pixels, other.pixels])
        self.proprio = torch.cat([self.proprio, other.proprio])
        self.actions = torch.cat([self.actions, other.actions])

    def sample(
        self, batch_size: int, shift_pad: int, colour_mix: float = 0.0
    ) -> tuple[dict[str, Tensor], Tensor]:
        """A random batch (global torch RNG, so resume reproduces it), augmented."""
        idx = torch.randint(0, len(self), (batch_size,))
        pixels = random_colour_mix(random_shift(self.pixels[idx], shift_pad), colour_mix)
        obs = {PIXELS: pixels, PROPRIO: self.proprio[idx]}
        return obs, self.actions[idx]


def load_labelled(path: Path) -> BCData:
    """Labelled samples saved by :func:`save_tensors` (a DAgger round, teacher demos)."""
    saved = load_tensors(path)
    return BCData(saved["pixels"], saved["proprio"], saved["actions"])


def load_bc_data(path: Path) -> BCData:
    from swan_policy.data.demos import load_demos

    demos = load_demos(path)
    return BCData(
        torch.from_numpy(np.ascontiguousarray(demos.obs[PIXELS])),
        torch.from_numpy(demos.obs[PROPRIO].astype(np.float32)),
        torch.from_numpy(demos.actions.astype(np.float32)),
    )


# ----------------------------------------------------------------------------- one BC step
class SandwichLoss(nn.Module):
    """The whole sandwich loss as one module, so DDP sees one forward per backward."""

    def __init__(
        self,
        policy: SwanPolicy,
        sparsity_weight: float,
        distill_weight: float,
        low_weight: float = 1.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.sparsity_weight = sparsity_weight
        self.distill_weight = distill_weight
        self.low_weight = low_weight
        # only the training step is compiled: rollouts and evaluation stay eager
        self.forward_fn = CompiledForward(policy) if compile else policy.forward_normalized

    def forward(
        self, obs: dict[str, Tensor], actions: Tensor, budgets: list[float]
    ) -> tuple[Tensor, dict[str, Any]]:
        return bc_sandwich_loss(
            self.policy,
            obs,
            actions,
            budgets,
            self.sparsity_weight,
            self.distill_weight,
            self.low_weight,
            self.forward_fn,
        )


def make_optimizer(policy: nn.Module, cfg: ExperimentConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (frozen ones, a slimmable's gates, stay out).

    The fused kernel where torch has one (CPU, CUDA): one pass over all parameters
    instead of a loop of small ops per tensor -- the gated policy has twice as many
    tensors (each gate network's weight and bias); on one CPU thread its step took
    2.4 ms as a loop and 0.6 ms fused (scripts/bench_bc_parts.py, docs/results.md).
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    device = params[0].device.type if params else "cpu"
    return torch.optim.AdamW(
        params,
        lr=cfg.bc.lr,
        weight_decay=cfg.bc.weight_decay,
        fused=device in ("cpu", "cuda"),
    )


def bc_update(
    loss_module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: BCData,
    cfg: ExperimentConfig,
) -> dict[str, Any]:
    """One behaviour-cloning step: sample, augment, sandwich loss, clip, step."""
    bc = cfg.bc
    obs, actions = data.sample(bc.batch_size, bc.shift_pad, bc.colour_mix)
    # the data stays in host memory; the batch goes to the model's device (GPU runs)
    device = next(loss_module.parameters()).device
    obs = {k: v.to(device, non_blocking=True) for k, v in obs.items()}
    actions = actions.to(device, non_blocking=True)
    # Sandwich rule: b=1 (learns from demos, carries the sparsity term), b_min and random
    # budgets (learn from demos and from the b=1 output) -> a monotone budget curve.
    budgets = (
        sandwich_budgets(bc.b_min, bc.n_random_budgets, levels=bc.budget_levels)
        if bc.sandwich
        else [1.0]
    )
    loss, info = loss_module(obs, actions, budgets)
    if not torch.isfinite(loss):
        raise TrainingError(f"loss is {float(loss.detach())}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    info["grad_norm"] = float(nn.utils.clip_grad_norm_(loss_module.parameters(), bc.grad_clip))
    optimizer.step()
    scheduler.step()
    info["lr"] = scheduler.get_last_lr()[0]
    return info


# ----------------------------------------------------------------------------- one DAgger round
def dagger_round(
    policy: SwanPolicy,
    cfg: ExperimentConfig,
    round_index: int,
    progress: Any = None,
    labeller: Labeller | None = None,
    episodes: int | None = None,
    beta: float | None = None,
) -> tuple[BCData, float]:
    """Roll out the policy (mixed with the expert w.p. beta), label every visited state
    with the expert's action, and return the new samples and the rollout success rate.

    ``labeller`` (default: the scripted expert), ``episodes`` (default
    ``dagger.episodes_per_round``) and ``beta`` (default ``beta0 * decay^(r-1)``) are
    what distillation's round 0 changes: the teacher drives (beta = 1) and labels.
    """
    dc = cfg.dagger
    if beta is None:
        beta = dc.beta0 * dc.beta_decay ** (round_index - 1)
    n_eps = episodes or dc.episodes_per_round
    vec = labelled_vec_env(cfg, min(cfg.eval.workers, n_eps), labeller)
    policy.eval()
    try:
        seed = cfg.seed * 1_000_003 + 100_000 * round_index  # disjoint from eval seeds
        rng = np.random.default_rng(seed)
        budgets = dc.budget if isinstance(dc.budget, list) else [dc.budget]
        eps: list[Episode] = []
        for i, budget in enumerate(budgets):  # the episodes split evenly across budgets
            count = n_eps // len(budgets) + (i < n_eps % len(budgets))
            if count:
                eps += run_episodes(
                    policy,
                    vec,
                    count,
                    seed + len(eps),
                    budget,
                    collect=True,
                    beta=beta,
                    rng=rng,
                    on_episode=progress,
                    batched=True,
                )
    finally:
        vec.close()
        policy.train()
    pixels, proprio, actions = [], [], []
    for ep in eps:
        assert ep.obs is not None and ep.expert_actions is not None
        pixels += ep.obs[PIXELS]
        proprio += ep.obs[PROPRIO]
        actions += ep.expert_actions
    data = BCData(
        torch.from_numpy(np.stack(pixels)),
        torch.from_numpy(np.stack(proprio).astype(np.float32)),
        torch.from_numpy(np.stack(actions).astype(np.float32)),
    )
    return data, float(np.mean([e.success for e in eps]))


# ----------------------------------------------------------------------------- the run
@dataclass
class RunContext:
    """Paths and distributed info of a run."""

    run_dir: Path
    rank: int = 0
    world: int = 1
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0


@contextmanager
def graceful_interrupt() -> Iterator[dict[str, bool]]:
    """First Ctrl-C sets a flag (the loop checkpoints and stops); a second exits at once."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: FrameType | None) -> None:
        flag["stop"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def lr_lambda(cfg: ExperimentConfig, total_steps: int) -> Any:
    warm, schedule = cfg.bc.warmup_steps, cfg.bc.lr_schedule

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def total_steps(cfg: ExperimentConfig) -> int:
    rounds = cfg.dagger.rounds if cfg.method in ("dagger", "distill") else 0
    return cfg.bc.steps + rounds * cfg.dagger.steps_per_round


def round_boundaries(cfg: ExperimentConfig) -> list[int]:
    """Global steps after which DAgger round r (1-based) collects data."""
    rounds = cfg.dagger.rounds if cfg.method in ("dagger", "distill") else 0
    return [cfg.bc.steps + r * cfg.dagger.steps_per_round for r in range(rounds)]


def _log(ctx: RunContext, writer: Any, record: dict[str, Any]) -> None:
    ctx.metrics.append(record)
    with open(ctx.run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if writer is not None:
        step = record["step"]
        for k, v in record.items():
            if isinstance(v, int | float) and k != "step":
                writer.add_scalar(k.replace("@", "_at_"), v, step)


def _eval_record(step: int, results: list[BudgetResult]) -> dict[str, Any]:
    rec: dict[str, Any] = {"step": step, "kind": "eval"}
    for r in results:
        rec[f"eval/success@{r.budget:g}"] = r.success_rate
        rec[f"eval/return@{r.budget:g}"] = r.return_mean
        rec[f"eval/macs@{r.budget:g}"] = r.macs_per_step
    return rec


def teacher_demos(
    policy_cfg: Any, cfg: ExperimentConfig, labeller: Labeller, path: Path, show: bool
) -> BCData:
    """Distillation's demonstrations: ``demos.episodes`` episodes that the teacher drives
    and labels (DAgger round 0 with beta = 1), saved to ``path`` and reused on resume."""
    if not path.exists():
        driver = SwanPolicy(policy_cfg)  # its actions are never executed (beta = 1)
        new, success = dagger_round(
            driver, cfg, 0, labeller=labeller, episodes=cfg.demos.episodes, beta=1.0
        )
        save_tensors(path, {"pixels": new.pixels, "proprio": new.proprio, "actions": new.actions})
        if show:
            print(f"teacher demos: {cfg.demos.episodes} episodes, success {success:.0%}")
    return load_labelled(path)


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
    from rich.console import Console

    ctx = RunContext(run_dir)
    if dist.is_available() and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend)
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
    console = Console(quiet=not (show and ctx.main))
    device = (
        torch.device(f"cuda:{ctx.rank % torch.cuda.device_count()}")
        if (torch.cuda.is_available())
        else torch.device("cpu")
    )
    torch.manual_seed(cfg.seed + ctx.rank)
    np.random.seed(cfg.seed + ctx.rank)  # noqa: NPY002  (legacy stream used by SB3 helpers)
    random.seed(cfg.seed + ctx.rank)  # checkpoints save this stream too: make it the seed's

    # --- environment, demos and policy --------------------------------------------------
    env = make_env(cfg.env)
    policy_cfg = resolve_policy_config(cfg.policy, env)
    box = env.action_space
    assert isinstance(box, gym.spaces.Box)  # resolve_policy_config refuses anything else
    low, high = box.low, box.high
    env.close()
    demo_path = Path(cfg.demos.path)
    if labeller is not None:
        demo_path = run_dir / "dagger" / "round_0.safetensors"
        if ctx.main:
            teacher_demos(policy_cfg, cfg, labeller, demo_path, show)
    elif ctx.main and not demo_path.exists():
        from swan_policy.data.demos import collect_demos

        console.print(f"collecting {cfg.demos.episodes} expert demos -> {demo_path}")
        collect_demos(
            cfg.env.id or "",
            cfg.demos.episodes,
            demo_path,
            workers=cfg.demos.workers,
            seed=cfg.seed,
            env_kwargs=cfg.env.kwargs,
            progress=show,
            only_success=cfg.demos.only_success,
        )
    if ctx.world > 1:
        dist.barrier()
    if labeller is not None:
        data = load_labelled(demo_path)
    else:
        data = load_bc_data(demo_path)
    demo_proprio = data.proprio  # normalisation statistics: the demos alone
    for path in extra_data:  # before any DAgger round: the same order when resumed
        data.append(load_labelled(path))
    ckpt = latest_checkpoint(run_dir) if resume else None
    state = TrainerState()
    changes: list[str] = []
    if ckpt is not None:
        loaded = load_checkpoint(ckpt)
        policy, state = loaded.policy, loaded.state
        if init_policy is None:  # the checkpoint's architecture is the one trained on
            resolved = cfg.model_copy(update={"policy": policy_cfg})
            changes = resume_changes(run_dir / "config.yaml", resolved, policy.config)
        else:  # what init_policy froze (a slimmable's gates) stays frozen
            for p, q in zip(policy.parameters(), init_policy.parameters(), strict=True):
                p.requires_grad_(q.requires_grad)
        for r in range(1, int(state.extras.get("dagger_rounds_done", 0)) + 1):
            data.append(load_labelled(run_dir / "dagger" / f"round_{r}.safetensors"))
    else:
        policy = init_policy if init_policy is not None else SwanPolicy(policy_cfg)
        std = demo_proprio.std(0)
        policy.set_normalization(demo_proprio.mean(0), torch.where(std > 1e-6, std, 1.0), low, high)
    policy.to(device).train()
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for line in changes:  # a resume with other settings (e.g. more DAgger rounds)
            console.print(f"resumed with a changed setting: {line}")
        (run_dir / "config.yaml").write_text(
            dump_config(cfg.model_copy(update={"policy": policy.config}))
        )
        start = start_record(
            state.step, ckpt is not None, cfg.seed, ctx.world, device, cfg.bc.compile
        )
        if changes:
            start["changed"] = changes
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(start) + "\n")
    loss_module: nn.Module = SandwichLoss(
        policy,
        policy.config.gate.sparsity_weight,
        cfg.bc.distill_weight,
        cfg.bc.low_weight,
        compile=cfg.bc.compile,
    )
    if ctx.world > 1:
        loss_module = nn.parallel.DistributedDataParallel(loss_module)
    optimizer = make_optimizer(policy, cfg)
    n_total = total_steps(cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, n_total))
    if ckpt is not None:
        if loaded.optimizer_state is not None:
            optimizer.load_state_dict(loaded.optimizer_state)
        if loaded.scheduler_state is not None:
            scheduler.load_state_dict(loaded.scheduler_state)
        loaded.restore_rng()
        console.print(f"resumed from {ckpt} at step {state.step}")
    writer = None
    if ctx.main and cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))

    def checkpoint() -> Path | None:
        if not ctx.main:
            return None
        return save_checkpoint(run_dir, policy, optimizer, state, scheduler)

    def evaluate_now() -> None:
        if not ctx.main:
            return
        results = evaluate_policy(
            policy, cfg.env, cfg.eval.episodes, cfg.eval.budgets, cfg.eval.workers, cfg.eval.seed
        )
        policy.train()
        rec = _eval_record(state.step, results)
        _log(ctx, writer, rec)
        metric = float(np.mean([r.success_rate for r in results]))
        line = ", ".join(f"b={r.budget:g}: {r.success_rate:.0%}" for r in results)
        console.print(f"step {state.step}: eval success {line}")
        if state.best_metric is None or metric > state.best_metric:
            state.best_metric = metric
            policy.save_pretrained(run_dir / "best")

    # --- the loop --------------------------------------------------------------------------
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    boundaries = round_boundaries(cfg)
    last_ckpt: Path | None = ckpt
    with (
        graceful_interrupt() as flag,
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            disable=not (show and ctx.main),
        ) as progress,
    ):
        task = progress.add_task("train", total=n_total, completed=state.step, status="")
        t0, samples = time.perf_counter(), 0
        while state.step < n_total:
            done_rounds = int(state.extras.get("dagger_rounds_done", 0))
            if done_rounds < len(boundaries) and state.step >= boundaries[done_rounds]:
                r = done_rounds + 1
                progress.update(task, description=f"dagger round {r}")
                path = run_dir / "dagger" / f"round_{r}.safetensors"
                if ctx.main:
                    new, success = dagger_round(policy, cfg, r, labeller=labeller)
                    save_tensors(
                        path, {"pixels": new.pixels, "proprio": new.proprio, "actions": new.actions}
                    )
                    _log(
                        ctx,
                        writer,
                        {
                            "step": state.step,
                            "kind": "dagger",
                            "round": r,
                            "rollout_success": success,
                            "new_samples": len(new),
                        },
                    )
                    console.print(
                        f"dagger round {r}: rollout success {success:.0%}, "
                        f"+{len(new)} labelled samples"
                    )
                if ctx.world > 1:
                    dist.barrier()
                data.append(load_labelled(path))
                state.extras["dagger_rounds_done"] = r
                progress.update(task, description="train")
            try:
                info = bc_update(loss_module, optimizer, scheduler, data, cfg)
            except TrainingError as e:
                raise TrainingError(
                    f"{e} at step {state.step}; stopped. Last good checkpoint: "
                    f"{last_ckpt or 'none'}"
                ) from None
            state.step += 1
            samples += cfg.bc.batch_size * ctx.world
            if state.step % cfg.log.log_every == 0 or state.step == n_total:
                elapsed = time.perf_counter() - t0
                info.update(step=state.step, kind="train", samples_per_s=samples / elapsed)
                if ctx.main:
                    _log(ctx, writer, info)
                t0, samples = time.perf_counter(), 0
                progress.update(
                    task,
                    status=(
                        f"loss {info['loss']:.4f} active {info['active_fraction']:.2f} "
                        f"{info['samples_per_s']:.0f} samples/s"
                    ),
                )
            progress.update(task, completed=state.step)
            if cfg.eval.every and state.step % cfg.eval.every == 0 and state.step < n_total:
                evaluate_now()
            if state.step % cfg.log.checkpoint_every == 0:
                last_ckpt = checkpoint() or last_ckpt
            if flag["stop"]:
                last_ckpt = checkpoint() or last_ckpt
                console.print(f"interrupted: checkpoint {last_ckpt}; resume with --resume")
                raise TrainingInterrupted()
    if cfg.eval.at_end:
        evaluate_now()
    final = checkpoint() or last_ckpt
    if writer is not None:
        writer.close()
    if ctx.world > 1:
        dist.barrier()
    assert final is not None or not ctx.main
    return final or run_dir

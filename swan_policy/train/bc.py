"""Behaviour cloning's pieces: the samples in memory, one gradient step and its schedule.

:class:`BCData` holds the demos and every DAgger round's labelled samples;
:func:`bc_update` is one step of the sandwich rule over budgets (DESIGN.md §3) with AdamW
(:func:`make_optimizer`) and the warm-up + cosine schedule of :func:`lr_lambda`. The run
around them (rounds, logging, checkpoints) is :func:`swan_policy.train.imitation.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from swan_policy.config import EnvConfig, ExperimentConfig
from swan_policy.data.augment import random_colour_mix, random_shift
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import load_tensors
from swan_policy.spec import PIXELS, PROPRIO
from swan_policy.train.losses import CompiledForward, bc_sandwich_loss, sandwich_budgets
from swan_policy.train.runtime import TrainingError, any_rank


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

    def tensors(self) -> dict[str, Tensor]:
        """What :func:`load_labelled` reads back (saved with ``save_tensors``)."""
        return {"pixels": self.pixels, "proprio": self.proprio, "actions": self.actions}

    def sample(
        self, batch_size: int, shift_pad: int, colour_mix: float = 0.0
    ) -> tuple[dict[str, Tensor], Tensor]:
        """A random batch (global torch RNG, so resume reproduces it), augmented."""
        idx = torch.randint(0, len(self), (batch_size,))
        pixels = random_colour_mix(random_shift(self.pixels[idx], shift_pad), colour_mix)
        obs = {PIXELS: pixels, PROPRIO: self.proprio[idx]}
        return obs, self.actions[idx]


def load_labelled(path: Path) -> BCData:
    """Labelled samples saved by ``save_tensors(path, data.tensors())`` (a DAgger round,
    teacher demos)."""
    saved = load_tensors(path)
    return BCData(saved["pixels"], saved["proprio"], saved["actions"])


def load_bc_data(path: Path, env: EnvConfig | None = None) -> BCData:
    """The expert demos of an HDF5 file (``swan_policy.data.demos``) as samples.

    Raises:
        DemoFileError: with ``env``: the file records (``env_args``) another env id or
            other env kwargs than ``env`` (a config changed, ``demos.path`` kept).
    """
    from swan_policy.data.demos import DemoFileError, load_demos

    demos = load_demos(path)
    if PIXELS not in demos.obs:  # BCData, the augmentations and DAgger rounds hold images
        raise DemoFileError(
            f"{path}: observation keys {sorted(demos.obs)}; imitation here trains pixel "
            f"policies and needs {PIXELS!r} (use a pixel env, e.g. "
            "swan_envs/PixelInvertedPendulum-v1, or RL for state observations)"
        )
    recorded = demos.env_args
    if env is not None and env.id and isinstance(recorded.get("env_name"), str):
        from swan_policy.envs import effective_kwargs

        theirs = (
            recorded["env_name"],
            effective_kwargs(recorded["env_name"], dict(recorded.get("env_kwargs") or {})),
        )
        ours = (env.id, effective_kwargs(env.id, dict(env.kwargs)))
        if theirs != ours:
            raise DemoFileError(
                f"{path}: collected on {theirs[0]} with kwargs {theirs[1]}, but this run's env "
                f"is {ours[0]} with kwargs {ours[1]}; point demos.path at a new file (it is "
                "collected) or remove this one"
            )
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


def lr_lambda(cfg: ExperimentConfig, total_steps: int) -> Any:
    """The learning-rate factor per step: linear warm-up, then cosine down to 5% (or
    constant), over the run's ``total_steps``."""
    warm, schedule = cfg.bc.warmup_steps, cfg.bc.lr_schedule

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


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
    if any_rank(not bool(torch.isfinite(loss))):  # every rank stops, not one alone
        raise TrainingError(f"loss is {float(loss.detach())}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(nn.utils.clip_grad_norm_(loss_module.parameters(), bc.grad_clip))
    if not math.isfinite(grad_norm):  # clipping would scale every weight to NaN
        raise TrainingError(f"gradient norm is {grad_norm} (loss {info['loss']:.4g})")
    info["grad_norm"] = grad_norm
    optimizer.step()
    scheduler.step()
    info["lr"] = scheduler.get_last_lr()[0]
    return info

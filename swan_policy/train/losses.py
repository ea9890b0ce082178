"""Training losses: behaviour cloning with the sandwich rule and in-place distillation.

Budget-robust training (DESIGN.md §3; US-Nets' sandwich rule, Yu & Huang 2019): each
step trains the free gate (``b = 1``), the smallest budget ``b_min`` and a few random
budgets in between. The full-budget pass learns from the demonstrations and carries
the sparsity term; the lower budgets learn from the demonstrations *and* from the
full-budget output (detached), so one model gives a monotone quality-vs-budget curve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from swan_policy.policy import SwanPolicy

log = logging.getLogger(__name__)
Forward = Callable[..., Tensor]


class CompiledForward:
    """``policy.forward_normalized`` through ``torch.compile``, falling back to eager.

    Inductor fuses the gates' elementwise work (mask, multiply, straight-through backward)
    into few kernels: on 2 CPU cores a sandwich BC step ran 1.5x faster (docs/results.md).
    It compiles once per budget the step uses (1, b_min and the ladder's levels). Where
    compiling fails -- no C++ compiler on a CPU machine, no Triton on a GPU one -- it logs
    why and the run goes on in eager mode.
    """

    def __init__(self, policy: SwanPolicy, backend: Any = "inductor") -> None:
        # Dynamo caches compiled code per function, not per policy: a process that trains
        # one policy after another (scripts/bench_tradeoff.py: ten in a row) would hit its
        # recompile limit (8) and quietly run the later ones eagerly. Each training starts
        # from an empty cache instead.
        torch._dynamo.reset()
        self.eager: Forward = policy.forward_normalized
        self.compiled: Forward | None = torch.compile(policy.forward_normalized, backend=backend)

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch._dynamo.exc.BackendCompilerFailed as exc:
                log.warning("torch.compile failed, training in eager mode: %s", exc)
                self.compiled = None
        return self.eager(*args, **kwargs)


def sandwich_budgets(
    b_min: float,
    n_random: int,
    generator: torch.Generator | None = None,
    levels: Sequence[float] = (),
) -> list[float]:
    """``[1.0, b_min, r_1, ..., r_n]`` with ``r_i`` uniform in ``(b_min, 1)``.

    Drawn from torch's RNG (the global one unless ``generator`` is given), so a resumed
    run, which restores that RNG, draws the same budgets. If ``levels`` is given, the
    random budgets are drawn from those levels instead (the ladder's exact budgets).
    """
    if not 0.0 < b_min <= 1.0:
        raise ValueError(f"b_min must be in (0, 1], got {b_min}")
    budgets = [1.0] if b_min == 1.0 else [1.0, b_min]
    for _ in range(n_random if b_min < 1.0 else 0):
        u = float(torch.rand((), generator=generator))
        if levels:
            budgets.append(float(levels[min(int(u * len(levels)), len(levels) - 1)]))
        else:
            budgets.append(b_min + (1.0 - b_min) * u)
    return budgets


def bc_sandwich_loss(
    policy: SwanPolicy,
    obs: Mapping[str, Tensor],
    actions: Tensor,
    budgets: Sequence[float],
    sparsity_weight: float,
    distill_weight: float,
    low_weight: float = 1.0,
    forward: Forward | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """One BC step's loss over the sandwich budgets.

    Args:
        policy: the gated policy (masked mode is used: gradients reach the gates).
        obs / actions: a batch; actions in the env's units.
        budgets: first entry must be 1.0 (the teacher for distillation).
        sparsity_weight: weight of the gates' regulariser (full-budget pass).
        distill_weight: ``alpha`` in ``(1 - alpha) * BC + alpha * distill`` for b < 1.
        low_weight: weight of each lower-budget pass (1: plain sum over the sandwich).
        forward: what computes the normalised action (default
            ``policy.forward_normalized``; a :class:`CompiledForward` of it with
            ``bc.compile``).

    Returns:
        ``(loss, info)``; info has ``bc_loss`` (b = 1), ``sparsity``, ``active_fraction``
        (b = 1), and for the smallest budget ``bc_loss@min`` (against the labels, like
        ``bc_loss``) and ``distill@min`` (against the b = 1 output).
    """
    forward = forward if forward is not None else policy.forward_normalized
    target = policy.normalize_actions(actions.to(torch.float32))
    full = forward(obs, budgets[0], mode="masked")
    bc = F.mse_loss(full, target)
    loss = bc
    if sparsity_weight > 0:
        reg = policy.sparsity_loss()
        loss = loss + sparsity_weight * reg
    else:  # logged only: a zero-weighted term would still cost a backward pass per layer
        with torch.no_grad():
            reg = policy.sparsity_loss()
    info: dict[str, Any] = {
        "bc_loss": float(bc.detach()),
        "sparsity": float(reg.detach()),
        "active_fraction": policy.last_active_fraction(),
    }
    teacher = full.detach()
    low_losses = []
    for i, b in enumerate(budgets[1:]):
        pred = forward(obs, b, mode="masked")
        bc_low, distill = F.mse_loss(pred, target), F.mse_loss(pred, teacher)
        low_losses.append((1.0 - distill_weight) * bc_low + distill_weight * distill)
        if i == 0:  # the smallest budget: its BC loss and its distillation, apart
            info["bc_loss@min"] = float(bc_low.detach())
            info["distill@min"] = float(distill.detach())
    if low_losses:
        loss = loss + low_weight * torch.stack(low_losses).sum()
    info["loss"] = float(loss.detach())
    return loss, info

"""The SWAN gate: hard, deterministic, input-dependent 0/1 gates per unit.

Our reading of SWAN (arXiv 2603.06601; mechanism fixed in DESIGN.md §3). For a layer
with ``N`` units, a cheap gate network maps the layer input to logits ``s`` and

* forward (training and inference alike): ``g = 1[s > 0]`` -- no sampling, ever;
* backward: straight-through estimator with the surrogate ``sigma(s / tau)``, i.e.
  ``dg/ds := sigma'(s / tau) / tau``;
* budget ``b in (0, 1]``: at most ``k = ceil(b * N)`` units stay active -- the ``k``
  highest logits among those with ``s > 0``;
* sparsity pressure: the expected active fraction ``mean sigma(s / tau)`` (``l1``) or
  the squared excess over a target rate (``target``). It is returned for an explicit
  loss term (behaviour cloning) and can also be *injected* into the backward pass
  (``inject_weight``), so it acts inside an unmodified SB3 ``train()`` (issue 5).

The gate also keeps per-unit activation statistics, which feed compaction, the
budget ladder and the schedulers.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

SparsityMode = Literal["l1", "target"]


def units_for_budget(budget: float, num_units: int) -> int:
    """``k = ceil(b * N)``: how many units a budget allows (at least one).

    A tiny epsilon guards against float products like ``0.3 * 10 = 3.0000000000000004``
    rounding up to 4.

    Raises:
        ValueError: if ``budget`` is not in ``(0, 1]``.
    """
    if not 0.0 < budget <= 1.0:  # False for NaN too
        raise ValueError(f"budget must be in (0, 1], got {budget!r}")
    return max(1, min(num_units, math.ceil(budget * num_units - 1e-9)))


def budget_mask(logits: Tensor, budget: float, num_ref_units: int | None = None) -> Tensor:
    """Hard 0/1 gates ``1[s > 0]`` capped to the top ``k`` logits per sample.

    Args:
        logits: gate logits ``[B, N]``.
        budget: fraction of units allowed, in ``(0, 1]``; ``1.0`` is the free gate.
        num_ref_units: the ``N`` that the budget refers to. A compacted layer keeps the
            unit count of the layer it came from, so ``k`` does not change when units
            that were never active are removed.

    Returns:
        A float tensor of the logits' shape holding exactly 0.0 and 1.0.
    """
    n = logits.shape[-1]
    k = units_for_budget(budget, num_ref_units if num_ref_units is not None else n)
    if k >= n:
        # 1[s > 0] in three cheap float passes: comparison + cast cost ~4x more on CPU
        # (per-op cost is what small RL layers pay, issue 5); NaN logits stay off
        return torch.sign(logits).clamp_(min=0.0).nan_to_num_(0.0)
    positive = logits > 0
    # top-k by logit; units with s <= 0 stay off even when fewer than k are positive.
    # Ties go to the lower index (a stable sort, as active_units and ONNX's TopK):
    # topk's own order among equal logits is unspecified, and under input_norm=image
    # the first conv's logits are its biases alone, equal for every unit at init.
    top = torch.sort(logits, dim=-1, descending=True, stable=True).indices[..., :k]
    keep = torch.zeros_like(positive).scatter_(-1, top, True)
    return (keep & positive).to(logits.dtype)


def active_units(logits: np.ndarray, budget: float, num_ref_units: int | None = None) -> np.ndarray:
    """Batch-1, numpy twin of :func:`budget_mask`: sorted indices of the active units.

    The sparse mode's fast path at batch 1: numpy handles the gate decision on these
    tiny vectors in ~1 us per op, where torch's per-op overhead is ~10x that.
    Exact ties between logits go to the lower index, as in :func:`budget_mask`.
    """
    n = logits.shape[-1]
    k = units_for_budget(budget, num_ref_units if num_ref_units is not None else n)
    idx = np.flatnonzero(logits > 0)
    if idx.size > k:
        top = np.argsort(-logits[idx], kind="stable")[:k]
        idx = np.sort(idx[top])
    return idx


class _HardGateSTE(torch.autograd.Function):
    """Forward: the given hard mask. Backward: sigmoid surrogate (+ injected sparsity)."""

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, mask: Tensor, tau: float, inject: float, target: float | None
    ) -> Tensor:
        ctx.save_for_backward(logits)
        ctx.tau = tau
        ctx.inject = inject
        ctx.target = target  # None: l1 regulariser; else the target rate
        return mask

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (logits,) = ctx.saved_tensors
        tau = ctx.tau
        sig = torch.sigmoid(logits if tau == 1.0 else logits / tau)
        if ctx.inject:
            # The regulariser's gradient, added here so that it acts even when the caller's
            # loss does not include it (SB3's train(), issue 5): d/ds of inject * R with
            # R = mean(sigma(s / tau)) (l1) or relu(mean - target)^2 (target), i.e.
            # c * sigma'(s / tau) / tau with c = dR/dmean / numel.
            scale = ctx.inject / logits.numel()
            if ctx.target is None:
                grad_out = grad_out + scale
            else:
                grad_out = grad_out + scale * 2.0 * torch.relu(sig.mean() - ctx.target)
        # grad_out * sigma'(s / tau) / tau; sigmoid_backward is one pass (small layers are
        # bound by per-op overhead: RL's MLPs, issue 5)
        grad = torch.ops.aten.sigmoid_backward(grad_out, sig)
        return (grad if tau == 1.0 else grad / tau), None, None, None, None


class SwanGate(nn.Module):
    """Turns gate logits into hard gates and keeps the gate's bookkeeping.

    The logits come from the owning layer's gate network (see ``layers.py``); this
    module is shared by every gated layer so the gate semantics live in one place.

    Args:
        num_units: ``N``, the number of gated units.
        tau: temperature of the sigmoid surrogate used in the backward pass.
        sparsity: ``"l1"`` penalises ``mean sigma(s/tau)``; ``"target"`` penalises
            ``relu(mean sigma(s/tau) - target_rate)^2``.
        target_rate: the active fraction aimed at in ``"target"`` mode.
        num_ref_units: ``N`` the budget refers to (set by compaction; default ``N``).
        detach_input: the owning layer feeds its gate network a detached input, so the
            straight-through gradient trains the gate network and stops there.
    """

    def __init__(
        self,
        num_units: int,
        tau: float = 1.0,
        sparsity: SparsityMode = "l1",
        target_rate: float = 0.5,
        num_ref_units: int | None = None,
        *,
        detach_input: bool = False,
    ) -> None:
        super().__init__()
        if num_units < 1:
            raise ValueError(f"num_units must be >= 1, got {num_units}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.num_units = num_units
        self.tau = float(tau)
        self.sparsity = sparsity
        self.target_rate = float(target_rate)
        self.num_ref_units = int(num_ref_units or num_units)
        self.detach_input = bool(detach_input)
        # weight of the regulariser injected into the backward pass (0 = off).
        self.inject_weight = 0.0
        self.track_stats = True  # accumulate in eval mode (training steps are not counted)
        # Statistics are observations, not parameters: non-persistent buffers (they move
        # with .to(device) but stay out of checkpoints). float64 so long runs keep counts.
        self.active_count: Tensor
        self.sample_count: Tensor
        self.register_buffer(
            "active_count", torch.zeros(num_units, dtype=torch.float64), persistent=False
        )
        self.register_buffer("sample_count", torch.zeros((), dtype=torch.float64), persistent=False)
        self._last_logits: Tensor | np.ndarray | None = None
        self._last_mask: Tensor | None = None
        self._last_idx: np.ndarray | None = None  # batch-1 fast path: mask built on demand
        self._reg: Tensor | None = None
        self._reg_logits: Tensor | None = None  # the regulariser is computed on demand

    def forward(self, logits: Tensor, budget: float = 1.0) -> Tensor:
        """Hard gates ``[B, N]`` (exactly 0/1) with a straight-through gradient."""
        detached = logits.detach()
        mask = budget_mask(detached, budget, self.num_ref_units)
        grad = torch.is_grad_enabled() and logits.requires_grad
        if grad:
            target = self.target_rate if self.sparsity == "target" else None
            gates = _HardGateSTE.apply(logits, mask, self.tau, self.inject_weight, target)
        else:
            gates = mask
        # per-call state: plain attributes, written past Module.__setattr__ (hot path)
        self.__dict__.update(
            _reg_logits=logits if grad else None,
            _reg=None,
            _last_logits=detached,
            _last_mask=mask,
            _last_idx=None,
        )
        if self.track_stats and not self.training:  # statistics describe inference only
            if grad:
                with torch.no_grad():
                    self._count(mask)
            else:
                self._count(mask)
        return gates

    def _count(self, mask: Tensor) -> None:
        self.active_count.add_(mask.sum(0))  # in place: no Module.__setattr__
        self.sample_count.add_(mask.shape[0])

    def select(self, logits: np.ndarray, budget: float = 1.0) -> np.ndarray:
        """Inference at batch 1: indices of the active units for logits ``[N]`` (numpy).

        Same decision and bookkeeping as :meth:`forward`, without autograd.
        """
        idx = active_units(logits, budget, self.num_ref_units)
        self._last_logits, self._last_mask, self._last_idx = logits, None, idx
        self._reg = self._reg_logits = None
        if self.track_stats and not self.training:
            self.active_count.numpy()[idx] += 1.0  # a view: updates the (CPU) buffer
            self.sample_count.add_(1.0)
        return idx

    @property
    def last_gates(self) -> Tensor | None:
        """Hard gates ``[B, N]`` of the last forward (or :meth:`select`)."""
        if self._last_mask is None and self._last_idx is not None:
            mask = torch.zeros(1, self.num_units)
            mask[0, torch.from_numpy(self._last_idx)] = 1.0
            self._last_mask = mask
        return self._last_mask

    @property
    def last_logits(self) -> Tensor | None:
        """Gate logits ``[B, N]`` of the last forward (what schedulers read as scores)."""
        if isinstance(self._last_logits, np.ndarray):
            self._last_logits = torch.from_numpy(self._last_logits).reshape(1, -1)
        return self._last_logits

    def _regulariser(self, logits: Tensor) -> Tensor:
        expected = torch.sigmoid(logits if self.tau == 1.0 else logits / self.tau).mean()
        if self.sparsity == "l1":
            return expected
        return torch.relu(expected - self.target_rate) ** 2

    def regulariser(self) -> Tensor | None:
        """The sparsity term of the last differentiable forward (None under no_grad).

        Computed on first request (layers whose term is never used skip its cost).
        """
        if self._reg is None and self._reg_logits is not None:
            self._reg = self._regulariser(self._reg_logits)
        return self._reg

    def activation_frequency(self) -> Tensor:
        """Per-unit fraction of samples in which the unit was active (float64 ``[N]``)."""
        return self.active_count / self.sample_count.clamp(min=1.0)

    def reset_stats(self) -> None:
        self.active_count.zero_()
        self.sample_count.zero_()

    def extra_repr(self) -> str:
        return (
            f"num_units={self.num_units}, tau={self.tau}, sparsity={self.sparsity!r}, "
            f"num_ref_units={self.num_ref_units}"
            + (", detach_input=True" if self.detach_input else "")
        )

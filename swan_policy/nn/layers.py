"""Gated layers: ``y = g ⊙ act(f(x))`` per unit, with three execution modes.

* ``masked`` (:meth:`forward`): compute every unit, multiply by the gate. The training
  reference; gradients reach the layer and, through the straight-through estimator,
  the gate network.
* ``sparse`` (:meth:`forward_sparse`): compute only the active units, fed only by the
  active inputs, by gathering rows *and* columns of the weights. Activations travel
  between layers as :class:`Active` -- the values of the present units plus their
  indices -- so zeros are never materialised. At batch > 1 the union of the samples'
  active sets is computed and the per-sample gates are applied on top (exact).
* ``compact``: :meth:`compacted` returns a smaller, static layer holding only the kept
  units (what compaction and the budget ladder build on).

All three agree on outputs (up to float summation order); tests assert atol 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swan_policy.nn import flops
from swan_policy.nn.gates import SparsityMode, SwanGate


@dataclass
class Active:
    """Activations of a unit dimension that holds only some units (sparse mode).

    Attributes:
        x: values ``[B, k, ...]`` of the present units.
        idx: ``[k]`` indices of those units in the full layer; ``None`` means all units,
            in order (nothing was dropped).
    """

    x: Tensor
    idx: Tensor | None = None

    def num_units(self, full: int) -> int:
        return full if self.idx is None else int(self.idx.numel())


def _select(t: Tensor, dim: int, idx: Tensor | None) -> Tensor:
    return t if idx is None else t.index_select(dim, idx)


def _fast_path(x: Tensor) -> bool:
    """Batch-1 CPU inference: gate decisions go through numpy (see gates.active_units)."""
    return x.shape[0] == 1 and not torch.is_grad_enabled() and x.device.type == "cpu"


def _np(t: Tensor) -> np.ndarray:
    return t.detach().numpy()


def _union_active(gates: Tensor) -> Tensor:
    """Indices of units active in at least one sample of the batch."""
    return gates.any(0).nonzero().squeeze(1)


class _GatedReLU(torch.autograd.Function):
    """``out = relu(z) * g[:, :, None, None]`` with a fused backward (training only).

    Autograd's unfused version makes several extra passes over the feature map per layer
    (the mask multiply, its two gradients, their reduction); this one makes one extra pass
    forward and one backward. It takes ~11% off a gated BC step (docs/results.md):

    * ``dz = dout * 1[out > 0]`` -- one ``threshold_backward``, because ``out > 0`` exactly
      where ``z > 0`` and ``g = 1`` (gates are exactly 0/1);
    * ``dg = sum_hw dout * relu(z)`` -- one batched dot product (``vecdot``).
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, g: Tensor) -> Tensor:
        y = torch.relu(z)
        out = y * g[:, :, None, None]
        ctx.save_for_backward(y, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
        y, out = ctx.saved_tensors
        grad_z = grad_g = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.ops.aten.threshold_backward(grad_out, out, 0.0)
        if ctx.needs_input_grad[1]:
            grad_g = torch.linalg.vecdot(grad_out.flatten(2), y.flatten(2))
        return grad_z, grad_g


class _GatedReLUInductor(torch.autograd.Function):
    """``out = relu(z) * g[:, :, None, None]`` written for ``torch.compile`` (training only).

    Same values and gradients as :class:`_GatedReLU`, a different split of the work: it
    saves the conv output ``z`` and computes ``dz = dout * g * 1[z > 0]`` and
    ``dg = sum_hw dout * relu(z)`` from elementwise ops and a ``sum``, which Inductor fuses,
    with the pooled gate input's gradient, into one reduction loop and one in-place loop
    per layer; with ``_GatedReLU``'s ``vecdot`` it generated three loops. (The compiled
    forward writes one map per layer either way: AOTAutograd recomputes what it can.)
    In eager mode each of these ops is its own pass, so eager keeps ``_GatedReLU``
    (``scripts/bench_gate_backward.py`` measures both; docs/results.md).
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, g: Tensor) -> Tensor:
        ctx.save_for_backward(z, g)
        return torch.relu(z) * g[:, :, None, None]

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:
        z, g = ctx.saved_tensors
        pos = z > 0
        grad_z = grad_g = None
        if ctx.needs_input_grad[0]:
            grad_z = torch.where(pos, grad_out * g[:, :, None, None], 0.0)
        if ctx.needs_input_grad[1]:
            grad_g = torch.where(pos, grad_out * z, 0.0).sum((2, 3))
        return grad_z, grad_g


class _SpatialMean(torch.autograd.Function):
    """``x.mean((2, 3))`` whose gradient stays a broadcast view (no full-size division).

    The gate network pools the conv's input; autograd's mean backward writes a full
    ``[B, C, H, W]`` tensor of ``grad / HW`` that is then added to the conv's input
    gradient. An expanded view costs no pass of its own.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.shape = x.shape
        return x.mean(dim=(2, 3))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        b, c, h, w = ctx.shape
        return (grad / (h * w))[:, :, None, None].expand(b, c, h, w)


def _spatial_mean(x: Tensor) -> Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        out: Tensor = _SpatialMean.apply(x)
        return out
    return x.mean(dim=(2, 3))  # inference and ONNX export: the plain op


@dataclass(frozen=True)
class GateOptions:
    """Gate hyper-parameters shared by every gated layer of a model."""

    tau: float = 1.0
    sparsity: SparsityMode = "l1"
    target_rate: float = 0.5
    init_bias: float = 1.0  # > 0: units start active, the regulariser switches them off
    # True: the gate network reads a detached input, so the straight-through gradient
    # trains the gate network only and never reaches the layers below
    detach_input: bool = False


class GatedConv2d(nn.Module):
    """Conv2d + ReLU whose output channels are gated from the globally pooled input.

    Gate logits: ``s = W_g · GAP(x) + b_g`` (``C_in * (H*W + N)`` MACs, a few percent of
    the convolution). With ``gated=False`` this is a plain conv + ReLU (the dense
    baseline of the same width).

    Args:
        in_channels / out_channels / kernel_size / stride / padding: as ``nn.Conv2d``.
        in_hw: spatial size of the input, needed to count MACs.
        gated: attach a gate (``True``) or build the ungated dense layer.
        options: gate hyper-parameters.
        num_ref_units: the unit count budgets refer to (kept by compaction).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        *,
        in_hw: tuple[int, int],
        gated: bool = True,
        options: GateOptions | None = None,
        num_ref_units: int | None = None,
    ) -> None:
        super().__init__()
        opts = options or GateOptions()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.in_hw = in_hw
        self.out_hw = (
            (in_hw[0] + 2 * padding - kernel_size) // stride + 1,
            (in_hw[1] + 2 * padding - kernel_size) // stride + 1,
        )
        if min(self.out_hw) < 1:
            raise ValueError(
                f"input {in_hw} is too small for kernel {kernel_size}, stride {stride}"
            )
        self.gated = gated
        self.gate_fc: nn.Linear | None = None
        self.gate: SwanGate | None = None
        if gated:
            self.gate_fc = nn.Linear(in_channels, out_channels)
            nn.init.constant_(self.gate_fc.bias, opts.init_bias)
            self.gate = SwanGate(
                out_channels,
                opts.tau,
                opts.sparsity,
                opts.target_rate,
                num_ref_units,
                detach_input=opts.detach_input,
            )

    @property
    def num_units(self) -> int:
        return self.conv.out_channels

    def gate_logits(self, x: Tensor, in_idx: Tensor | None = None) -> Tensor:
        assert self.gate_fc is not None
        weight = _select(self.gate_fc.weight, 1, in_idx)
        return F.linear(_spatial_mean(x), weight, self.gate_fc.bias)

    def forward(self, x: Tensor, budget: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """Masked mode: returns ``(y [B, N, H, W], gates [B, N] or None if ungated)``."""
        z = self.conv(x)
        if self.gate is None:
            return F.relu(z), None
        g = self.gate(self.gate_logits(x.detach() if self.gate.detach_input else x), budget)
        if torch.is_grad_enabled() and (z.requires_grad or g.requires_grad):
            fused = _GatedReLUInductor if torch.compiler.is_compiling() else _GatedReLU
            y: Tensor = fused.apply(z, g)
            return y, g
        return F.relu(z).mul_(g[:, :, None, None]), g  # no autograd: in place, no copy

    def forward_sparse(self, a: Active, budget: float = 1.0) -> Active:
        """Sparse mode (inference): only active output channels, fed by active inputs.

        The gates of the call are in ``self.gate.last_gates``.
        """
        weight, bias = self.conv.weight, self.conv.bias
        assert bias is not None  # built with bias=True
        if a.idx is not None:
            weight = weight.index_select(1, a.idx)
        if self.gate is None:
            return Active(F.relu(self._conv(a.x, weight, bias)))
        if _fast_path(a.x):
            assert self.gate_fc is not None
            pooled = _np(a.x.mean(dim=(2, 3)))[0]
            w_gate = _np(self.gate_fc.weight)
            if a.idx is not None:
                w_gate = w_gate[:, a.idx.numpy()]
            logits = w_gate @ pooled + _np(self.gate_fc.bias)
            sel = self.gate.select(logits, budget)
            if sel.size == self.num_units:  # every unit on: no gather, no index
                return Active(F.relu(self._conv(a.x, weight, bias)))
            out_idx = torch.from_numpy(sel)
            y = F.relu(
                self._conv(a.x, weight.index_select(0, out_idx), bias.index_select(0, out_idx))
            )
            return Active(y, out_idx)
        g = self.gate(self.gate_logits(a.x, a.idx), budget)
        out_idx = _union_active(g)
        y = F.relu(self._conv(a.x, weight.index_select(0, out_idx), bias.index_select(0, out_idx)))
        if y.shape[0] > 1:  # per-sample gates inside the batch's union
            y = y * g.index_select(1, out_idx)[:, :, None, None]
        return Active(y, out_idx)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        # conv2d refuses zero-sized weights; an empty unit set is a valid gate pattern.
        if weight.shape[0] == 0 or weight.shape[1] == 0:
            out = bias.view(1, -1, 1, 1).expand(x.shape[0], -1, *self.out_hw)
            return out.clone()
        return F.conv2d(x, weight, bias, self.conv.stride, self.conv.padding)

    def macs(self, n_in: flops.N, n_out: flops.N) -> flops.N:
        """MACs executed per sample with ``n_in`` active inputs and ``n_out`` active units."""
        kernel = (self.conv.kernel_size[0], self.conv.kernel_size[1])
        total = flops.conv2d_macs(n_in, n_out, kernel, self.out_hw)
        if self.gate is not None:
            total = total + flops.conv_gate_macs(n_in, self.in_hw, self.num_units)
        return total

    @torch.no_grad()
    def compacted(self, keep_out: Tensor, keep_in: Tensor | None = None) -> GatedConv2d:
        """A smaller layer with units ``keep_out`` fed by input channels ``keep_in``."""
        conv = self.conv
        new = GatedConv2d(
            conv.in_channels if keep_in is None else int(keep_in.numel()),
            int(keep_out.numel()),
            conv.kernel_size[0],
            conv.stride[0],
            _padding_int(conv),
            in_hw=self.in_hw,
            gated=self.gate is not None,
            num_ref_units=self.gate.num_ref_units if self.gate is not None else None,
        )
        assert new.conv.bias is not None and conv.bias is not None
        new.conv.weight.copy_(_select(conv.weight, 1, keep_in)[keep_out])
        new.conv.bias.copy_(conv.bias[keep_out])
        if self.gate is not None and self.gate_fc is not None:
            assert new.gate is not None and new.gate_fc is not None
            _copy_gate_settings(self.gate, new.gate)
            new.gate_fc.weight.copy_(_select(self.gate_fc.weight, 1, keep_in)[keep_out])
            new.gate_fc.bias.copy_(self.gate_fc.bias[keep_out])
        return new


class GatedLinear(nn.Module):
    """Linear + ReLU whose output units are gated by a low-rank map of the input.

    Gate logits: ``s = U (V x) + b_g`` with ``V: in -> r`` and ``U: r -> N``
    (``r * (in + N)`` MACs; rank 4 keeps a 128 -> 256 layer's gate under 5%).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int = 4,
        gated: bool = True,
        options: GateOptions | None = None,
        num_ref_units: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= rank <= 16:
            raise ValueError(f"gate rank must be in [1, 16], got {rank}")
        opts = options or GateOptions()
        self.linear = nn.Linear(in_features, out_features)
        self.gate_down: nn.Linear | None = None
        self.gate_up: nn.Linear | None = None
        self.gate: SwanGate | None = None
        self.rank = 0
        if gated:
            self.rank = rank
            self.gate_down = nn.Linear(in_features, self.rank, bias=False)
            self.gate_up = nn.Linear(self.rank, out_features)
            nn.init.constant_(self.gate_up.bias, opts.init_bias)
            self.gate = SwanGate(
                out_features,
                opts.tau,
                opts.sparsity,
                opts.target_rate,
                num_ref_units,
                detach_input=opts.detach_input,
            )

    @property
    def num_units(self) -> int:
        return self.linear.out_features

    def gate_logits(self, x: Tensor, in_idx: Tensor | None = None) -> Tensor:
        assert self.gate_down is not None and self.gate_up is not None
        z = F.linear(x, _select(self.gate_down.weight, 1, in_idx))
        # functional, not a module call: small RL layers pay per call (issue 5)
        return F.linear(z, self.gate_up.weight, self.gate_up.bias)

    def forward(self, x: Tensor, budget: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """Masked mode: ``(y [B, N], gates [B, N] or None)``."""
        y = F.relu(F.linear(x, self.linear.weight, self.linear.bias))
        if self.gate is None:
            return y, None
        g = self.gate(self.gate_logits(x.detach() if self.gate.detach_input else x), budget)
        if not torch.is_grad_enabled():
            return y.mul_(g), g  # inference: no copy
        return y * g, g

    def forward_sparse(self, a: Active, budget: float = 1.0) -> Active:
        """Sparse mode (inference); the gates of the call are in ``self.gate.last_gates``."""
        weight = _select(self.linear.weight, 1, a.idx)
        if self.gate is None:
            return Active(F.relu(F.linear(a.x, weight, self.linear.bias)))
        if _fast_path(a.x):
            assert self.gate_down is not None and self.gate_up is not None
            x_np = _np(a.x)[0]
            down = _np(self.gate_down.weight)
            if a.idx is not None:
                down = down[:, a.idx.numpy()]
            logits = _np(self.gate_up.weight) @ (down @ x_np) + _np(self.gate_up.bias)
            out_idx = torch.from_numpy(self.gate.select(logits, budget))
            g = None
        else:
            g = self.gate(self.gate_logits(a.x, a.idx), budget)
            out_idx = _union_active(g)
        y = F.relu(
            F.linear(
                a.x, weight.index_select(0, out_idx), self.linear.bias.index_select(0, out_idx)
            )
        )
        if g is not None and y.shape[0] > 1:
            y = y * g.index_select(1, out_idx)
        return Active(y, out_idx)

    def macs(self, n_in: flops.N, n_out: flops.N) -> flops.N:
        total = flops.linear_macs(n_in, n_out)
        if self.gate is not None:
            total = total + flops.lowrank_gate_macs(n_in, self.rank, self.num_units)
        return total

    @torch.no_grad()
    def compacted(self, keep_out: Tensor, keep_in: Tensor | None = None) -> GatedLinear:
        lin = self.linear
        new = GatedLinear(
            lin.in_features if keep_in is None else int(keep_in.numel()),
            int(keep_out.numel()),
            rank=self.rank or 4,
            gated=self.gate is not None,
            num_ref_units=self.gate.num_ref_units if self.gate is not None else None,
        )
        new.linear.weight.copy_(_select(lin.weight, 1, keep_in)[keep_out])
        new.linear.bias.copy_(lin.bias[keep_out])
        if self.gate is not None:
            assert self.gate_down is not None and self.gate_up is not None
            assert new.gate is not None and new.gate_down is not None and new.gate_up is not None
            _copy_gate_settings(self.gate, new.gate)
            new.gate_down.weight.copy_(_select(self.gate_down.weight, 1, keep_in))
            new.gate_up.weight.copy_(self.gate_up.weight[keep_out])
            new.gate_up.bias.copy_(self.gate_up.bias[keep_out])
        return new


def sparse_linear(layer: nn.Linear, a: Active) -> Tensor:
    """An ungated output layer in sparse mode: only the present input columns."""
    return F.linear(a.x, _select(layer.weight, 1, a.idx), layer.bias)


@torch.no_grad()
def compact_linear(layer: nn.Linear, keep_in: Tensor | None) -> nn.Linear:
    """An ungated linear layer with only the input columns ``keep_in``."""
    new = nn.Linear(
        layer.in_features if keep_in is None else int(keep_in.numel()), layer.out_features
    )
    new.weight.copy_(_select(layer.weight, 1, keep_in))
    new.bias.copy_(layer.bias)
    return new


def _copy_gate_settings(src: SwanGate, dst: SwanGate) -> None:
    dst.tau, dst.sparsity, dst.target_rate = src.tau, src.sparsity, src.target_rate
    dst.num_ref_units = src.num_ref_units
    dst.inject_weight = src.inject_weight
    dst.detach_input = src.detach_input


def _padding_int(conv: nn.Conv2d) -> int:
    pad = conv.padding
    if isinstance(pad, str):
        raise ValueError(f"string padding {pad!r} is not supported by gated convs")
    return int(pad[0])

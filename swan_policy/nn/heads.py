"""Gated MLP action head and the (small, ungated) proprioception MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from swan_policy.nn import flops
from swan_policy.nn.layers import Active, GatedLinear, GateOptions, sparse_linear


class ProprioMLP(nn.Module):
    """``[B, P]`` -> ``[B, D]``: one linear + ReLU (tiny; not worth a gate).

    ``hidden=0`` is the identity (``D = P``): state-observation policies feed the
    normalised vector straight into the gated head.
    """

    def __init__(self, proprio_dim: int, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(proprio_dim, hidden) if hidden > 0 else None
        self.out_dim = hidden if hidden > 0 else proprio_dim

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.linear(x)) if self.linear is not None else x

    def macs(self, batch: int) -> Tensor:
        if self.linear is None:
            return torch.zeros(batch)
        return torch.full((batch,), float(flops.linear_macs(self.linear.in_features, self.out_dim)))


class GatedMLPHead(nn.Module):
    """Gated hidden layers, then an ungated linear output (pre-squash actions).

    Args:
        in_dim: input features.
        hidden: width of each gated hidden layer.
        out_dim: action dimension.
        gated: gates on the hidden layers (``False`` builds the dense baseline).
        rank: rank of the hidden layers' low-rank gate networks.
        options: gate hyper-parameters.
        ref_units: per-layer unit count the budget refers to (set by compaction).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: list[int],
        out_dim: int,
        *,
        gated: bool = True,
        rank: int = 4,
        options: GateOptions | None = None,
        ref_units: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        layers: list[GatedLinear] = []
        d = in_dim
        for i, h in enumerate(hidden):
            layers.append(
                GatedLinear(
                    d,
                    h,
                    rank=rank,
                    gated=gated,
                    options=options,
                    num_ref_units=ref_units[i] if ref_units else None,
                )
            )
            d = h
        self.layers = nn.ModuleList(layers)
        self.hidden: list[GatedLinear] = layers  # typed view of the same modules
        self.out = nn.Linear(d, out_dim)

    def forward(self, x: Tensor, budget: float = 1.0) -> tuple[Tensor, list[Tensor | None]]:
        gates: list[Tensor | None] = []
        for layer in self.hidden:
            x, g = layer(x, budget)
            gates.append(g)
        return self.out(x), gates

    def forward_sparse(self, a: Active, budget: float = 1.0) -> Tensor:
        """Sparse mode: pre-squash actions (gates: ``layer.gate.last_gates``)."""
        for layer in self.hidden:
            a = layer.forward_sparse(a, budget)
        return sparse_linear(self.out, a)

    def executed_macs(
        self, n_in: Tensor, gates: list[Tensor | None], batch: int
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for i, (layer, g) in enumerate(zip(self.hidden, gates, strict=True)):
            n_out = g.sum(1) if g is not None else torch.full((batch,), float(layer.num_units))
            out[f"head.layers.{i}"] = layer.macs(n_in, n_out)
            n_in = n_out
        out["head.out"] = n_in * self.out.out_features
        return out

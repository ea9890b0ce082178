"""Input dependence is real: a gated MLP learns context-specific gate patterns."""

from __future__ import annotations

import torch
from torch import nn

from swan_policy.nn.layers import GatedLinear, GateOptions


class _GatedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        opts = GateOptions(init_bias=1.0)
        self.l1 = GatedLinear(10, 32, rank=4, options=opts)
        self.l2 = GatedLinear(32, 32, rank=4, options=opts)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, g1 = self.l1(x)
        h, g2 = self.l2(h)
        assert g1 is not None and g2 is not None
        return self.out(h).squeeze(1), [g1, g2]


def _batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # context 0 needs inputs u[0:4], context 1 needs u[4:8]
    ctx = torch.randint(0, 2, (n,), generator=gen)
    u = torch.randn(n, 8, generator=gen)
    x = torch.cat([nn.functional.one_hot(ctx, 2).float(), u], 1)
    y = torch.where(ctx == 0, u[:, :4].sum(1), u[:, 4:].abs().sum(1))
    return x, y, ctx


def _train(sparsity_weight: float) -> tuple[_GatedMLP, float, float]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = _GatedMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        x, y, _ = _batch(256, gen)
        pred, _ = model(x)
        regs = [
            r
            for m in (model.l1, model.l2)
            if m.gate is not None and (r := m.gate.regulariser()) is not None
        ]
        assert len(regs) == 2  # both layers gated, both forwards differentiable
        reg = torch.stack(regs).mean()
        loss = nn.functional.mse_loss(pred, y) + sparsity_weight * reg
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x, y, _ = _batch(2048, gen)
        pred, gates = model(x)
        mse = float(nn.functional.mse_loss(pred, y))
        active = float(torch.cat(gates, 1).mean())
    return model, mse, active


def test_sparsity_lowers_active_fraction_and_gates_depend_on_context() -> None:
    _, mse_dense, active_dense = _train(0.0)
    model, mse_sparse, active_sparse = _train(1.0)
    assert active_sparse < 0.6 * active_dense
    assert mse_sparse < 0.5  # still solves the task (target variance ~ 4)
    gen = torch.Generator().manual_seed(1)
    x, _, ctx = _batch(2048, gen)
    with torch.no_grad():
        _, gates = model(x)
    g = torch.cat(gates, 1)
    freq0, freq1 = g[ctx == 0].mean(0), g[ctx == 1].mean(0)
    # many units fire in one context and (almost) never in the other: a constant
    # mask, or gates that ignore the input, would give equal frequencies
    specific = (freq0 - freq1).abs() > 0.8
    assert int(specific.sum()) >= 5, (freq0, freq1)
    print(
        f"dense mse={mse_dense:.3f} active={active_dense:.2f}; sparse mse={mse_sparse:.3f} "
        f"active={active_sparse:.2f}; context-specific units={int(specific.sum())}"
    )

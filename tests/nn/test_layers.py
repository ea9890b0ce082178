from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from swan_policy.nn import layers
from swan_policy.nn.layers import Active, GatedConv2d, GatedLinear, GateOptions


def _conv(seed: int = 0) -> GatedConv2d:
    torch.manual_seed(seed)
    return GatedConv2d(4, 12, 3, 1, in_hw=(10, 10), options=GateOptions(init_bias=0.0))


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("budget", [1.0, 0.5, 0.25])
def test_conv_masked_equals_sparse(batch: int, budget: float) -> None:
    layer = _conv()
    x = torch.relu(torch.randn(batch, 4, 10, 10))
    y_masked, g = layer(x, budget)
    a = layer.forward_sparse(Active(x), budget)
    assert layer.gate is not None
    assert torch.equal(g, layer.gate.last_gates)  # type: ignore[arg-type]  # set by the forward
    dense = torch.zeros_like(y_masked)
    assert a.idx is not None
    dense[:, a.idx] = a.x
    torch.testing.assert_close(dense, y_masked, atol=1e-5, rtol=0)


def test_linear_sparse_with_sparse_input_and_compacted() -> None:
    torch.manual_seed(0)
    layer = GatedLinear(10, 20, rank=3, options=GateOptions(init_bias=0.0))
    x = torch.randn(3, 10)
    in_idx = torch.tensor([0, 2, 5, 7])
    x_masked = torch.zeros_like(x)
    x_masked[:, in_idx] = x[:, in_idx]
    y, g = layer(x_masked, 0.5)
    a = layer.forward_sparse(Active(x[:, in_idx], in_idx), 0.5)
    dense = torch.zeros_like(y)
    assert a.idx is not None
    dense[:, a.idx] = a.x
    torch.testing.assert_close(dense, y, atol=1e-5, rtol=0)
    # compact: keep the union of active units; same output on those units
    assert g is not None
    keep = g.any(0).nonzero().squeeze(1)
    small = layer.compacted(keep, in_idx)
    y_small, _ = small(x[:, in_idx], 0.5)
    torch.testing.assert_close(y_small, y[:, keep], atol=1e-5, rtol=0)
    assert small.gate is not None and small.gate.num_ref_units == 20


def test_all_units_off_gives_zero_width_but_valid_tensors() -> None:
    layer = _conv()
    assert layer.gate_fc is not None
    nn.init.constant_(layer.gate_fc.bias, -1e3)
    with torch.no_grad():
        a = layer.forward_sparse(Active(torch.rand(1, 4, 10, 10)), 1.0)
    assert layer.gate is not None and layer.gate.last_gates is not None
    assert a.x.shape == (1, 0, 8, 8) and layer.gate.last_gates.sum() == 0
    nxt = GatedConv2d(12, 6, 3, in_hw=(8, 8))
    b = nxt.forward_sparse(a, 1.0)
    assert b.x.shape[0] == 1 and torch.isfinite(b.x).all()


def test_ste_gradients_reach_layer_and_gate_parameters() -> None:
    layer = GatedLinear(6, 8, rank=2, options=GateOptions(init_bias=0.5))
    y, _ = layer(torch.randn(16, 6))
    y.square().mean().backward()
    assert layer.gate_down is not None and layer.gate_up is not None
    for p in (
        layer.linear.weight,
        layer.gate_down.weight,
        layer.gate_up.weight,
        layer.gate_up.bias,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    conv = _conv()
    yc, _ = conv(torch.rand(2, 4, 10, 10))
    yc.mean().backward()
    assert conv.gate_fc is not None and conv.gate_fc.weight.grad is not None
    assert conv.gate_fc.weight.grad.abs().sum() > 0


def _input_grad(layer: GatedConv2d | GatedLinear, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """``d/dx`` of ``<layer(x), w>`` through the layer, and through its conv / linear alone
    with the layer's gates held as constants."""
    x1 = x.clone().requires_grad_(True)
    y, g = layer(x1, 1.0)
    (y * w).sum().backward()
    assert x1.grad is not None and g is not None
    x2 = x.clone().requires_grad_(True)
    inner = layer.conv(x2) if isinstance(layer, GatedConv2d) else layer.linear(x2)
    mask = g.detach()[:, :, None, None] if isinstance(layer, GatedConv2d) else g.detach()
    (torch.relu(inner) * mask * w).sum().backward()
    assert x2.grad is not None
    return x1.grad, x2.grad


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_detached_gate_input_stops_the_gate_gradient_below_the_layer(kind: str) -> None:
    torch.manual_seed(0)
    grads = {}
    for detach in (False, True):
        torch.manual_seed(0)
        opts = GateOptions(init_bias=0.0, detach_input=detach)
        layer: GatedConv2d | GatedLinear
        if kind == "conv":
            layer = GatedConv2d(4, 12, 3, 1, in_hw=(10, 10), options=opts)
            x, w = torch.rand(3, 4, 10, 10), torch.randn(3, 12, 8, 8)
        else:
            layer = GatedLinear(10, 20, rank=3, options=opts)
            x, w = torch.randn(3, 10), torch.randn(3, 20)
        grads[detach] = _input_grad(layer, x, w)
        gate_params = [p for n, p in layer.named_parameters() if n.startswith("gate_")]
        assert gate_params and all(
            p.grad is not None and p.grad.abs().sum() > 0 for p in gate_params
        )
        # the gate is still a full layer's: compaction keeps the setting
        assert layer.gate is not None
        small = layer.compacted(torch.arange(5))
        assert small.gate is not None and small.gate.detach_input is detach
    through, frozen = grads[True]
    torch.testing.assert_close(through, frozen, rtol=1e-6, atol=1e-7)
    through, frozen = grads[False]
    assert (through - frozen).abs().max() > 1e-4  # without detaching, the gate path adds to it


def test_ungated_layers_are_plain() -> None:
    conv = GatedConv2d(3, 5, 3, in_hw=(7, 7), gated=False)
    x = torch.rand(2, 3, 7, 7)
    y, g = conv(x)
    assert g is None
    torch.testing.assert_close(y, torch.relu(conv.conv(x)))
    assert conv.macs(3, 5) == 3 * 5 * 9 * 25


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        GatedConv2d(3, 4, 5, 1, in_hw=(3, 3))
    with pytest.raises(ValueError, match="gate rank"):
        GatedLinear(4, 4, rank=0)


@pytest.mark.parametrize("budget", [1.0, 0.5])
def test_fused_conv_gate_backward_matches_autograd_composition(budget: float) -> None:
    """The fused gate + ReLU (and pooled gate input) give autograd's exact gradients."""
    layer = _conv(3).double()
    x = torch.randn(6, 4, 10, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 12, 8, 8, dtype=torch.float64)  # a loss that weights every output

    y, _ = layer(x, budget)
    (y * w).sum().backward()
    fused = [t.grad.clone() for t in (x, *layer.parameters()) if t.grad is not None]

    layer.zero_grad()
    x2 = x.detach().clone().requires_grad_(True)
    assert layer.gate is not None and layer.gate_fc is not None
    logits = torch.nn.functional.linear(
        x2.mean(dim=(2, 3)), layer.gate_fc.weight, layer.gate_fc.bias
    )
    g = layer.gate(logits, budget)
    ref_y = torch.relu(layer.conv(x2)) * g[:, :, None, None]
    torch.testing.assert_close(y, ref_y, rtol=0, atol=0)
    (ref_y * w).sum().backward()
    ref = [t.grad for t in (x2, *layer.parameters()) if t.grad is not None]
    assert len(fused) == len(ref) == 5  # input, conv weight/bias, gate weight/bias
    for a, b in zip(fused, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert x.grad is not None and layer.gate_fc.weight.grad.abs().sum() > 0


def test_compile_time_gate_formulation_matches_the_eager_one() -> None:
    """``_GatedReLUInductor`` (what ``torch.compile`` traces) gives ``_GatedReLU``'s output
    and gradients, including for closed gates (``dg`` of a closed unit is not zero)."""
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(5, 6, 7, 7, dtype=torch.float64, generator=gen)
    g0 = (torch.rand(5, 6, dtype=torch.float64, generator=gen) > 0.4).double()
    w = torch.randn(5, 6, 7, 7, dtype=torch.float64, generator=gen)
    results = []
    for fn in (layers._GatedReLU, layers._GatedReLUInductor):
        z, g = z0.clone().requires_grad_(True), g0.clone().requires_grad_(True)
        out = fn.apply(z, g)
        (out * w).sum().backward()
        results.append((out.detach(), z.grad, g.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    closed = g0 == 0
    assert closed.any() and results[1][2][closed].abs().sum() > 0

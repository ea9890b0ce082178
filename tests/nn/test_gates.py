from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from swan_policy.nn.gates import SwanGate, active_units, budget_mask, units_for_budget

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)


@given(
    rows=st.lists(st.lists(finite, min_size=1, max_size=24), min_size=1, max_size=4).filter(
        lambda r: len({len(x) for x in r}) == 1
    ),
    budget=st.floats(0.01, 1.0),
)
def test_budget_keeps_min_of_k_and_positive(rows: list[list[float]], budget: float) -> None:
    s = torch.tensor(rows)
    n = s.shape[1]
    g = budget_mask(s, budget)
    assert set(g.unique().tolist()) <= {0.0, 1.0}
    k = units_for_budget(budget, n)
    assert k == max(1, min(n, math.ceil(budget * n - 1e-9)))
    for row, gates in zip(s, g, strict=True):
        n_pos = int((row > 0).sum())
        assert int(gates.sum()) == min(k, n_pos)
        # only positive logits are active, and the kept ones are the largest
        assert bool((row[gates.bool()] > 0).all())
        dropped = row[(~gates.bool()) & (row > 0)]
        if gates.sum() and dropped.numel():
            assert row[gates.bool()].min() >= dropped.max()


def test_units_for_budget_rounding_and_range() -> None:
    assert units_for_budget(0.3, 10) == 3  # 0.3 * 10 = 3.0000000000000004 must not round up
    assert units_for_budget(0.25, 64) == 16
    assert units_for_budget(0.01, 8) == 1
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="budget must be in"):
            units_for_budget(bad, 8)


def test_gate_is_hard_deterministic_and_straight_through() -> None:
    gate = SwanGate(6, tau=0.5)
    s = torch.tensor([[1.0, -1.0, 0.2, -0.2, 3.0, 0.0]], requires_grad=True)
    g1 = gate(s)
    g2 = gate(s)
    assert g1.tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]
    assert torch.equal(g1, g2)
    g1.sum().backward()
    sig = torch.sigmoid(s.detach() / 0.5)
    assert torch.allclose(s.grad, sig * (1 - sig) / 0.5)


def test_injected_sparsity_gradient_matches_explicit_regulariser() -> None:
    s = torch.randn(4, 8, requires_grad=True)
    gate = SwanGate(8, tau=1.0)
    gate.inject_weight = 0.7
    gate(s).sum().backward()
    injected = s.grad.clone()
    s.grad = None
    plain = SwanGate(8, tau=1.0)
    out = plain(s).sum() + 0.7 * plain.regulariser()
    out.backward()
    assert torch.allclose(injected, s.grad)


def test_target_rate_regulariser_is_zero_below_target() -> None:
    gate = SwanGate(4, sparsity="target", target_rate=0.9)
    gate(torch.full((2, 4), -3.0, requires_grad=True))
    assert float(gate.regulariser().detach()) == 0.0
    gate(torch.full((2, 4), 5.0, requires_grad=True))
    assert float(gate.regulariser().detach()) > 0.0


def test_activation_statistics() -> None:
    gate = SwanGate(3)
    gate(torch.tensor([[1.0, 1.0, 1.0]]))  # training mode: not counted
    assert float(gate.sample_count) == 0.0
    gate.eval()
    with torch.no_grad():
        gate(torch.tensor([[1.0, -1.0, 1.0], [1.0, -1.0, -1.0]]))
        gate(torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0]]))
    assert gate.activation_frequency().tolist() == [1.0, 0.25, 0.25]
    gate.reset_stats()
    assert gate.activation_frequency().tolist() == [0.0, 0.0, 0.0]


@given(
    row=st.lists(
        st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32),
        min_size=1,
        max_size=40,
        unique=True,  # exact ties may be broken differently by torch.topk and numpy
    ),
    budget=st.floats(0.01, 1.0),
)
def test_numpy_fast_path_matches_budget_mask(row: list[float], budget: float) -> None:
    s = torch.tensor([row])
    expected = budget_mask(s, budget)[0].nonzero().squeeze(1).tolist()
    assert active_units(s[0].numpy(), budget).tolist() == expected


@given(
    row=st.lists(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]), min_size=1, max_size=40),
    budget=st.floats(0.01, 1.0),
)
def test_exact_ties_go_to_the_lower_index_in_torch_and_numpy(
    row: list[float], budget: float
) -> None:
    """Masked (torch) and sparse (numpy) modes pick the same units when logits tie
    exactly: the lower index wins, as in ONNX's TopK."""
    s = torch.tensor([row])
    expected = budget_mask(s, budget)[0].nonzero().squeeze(1).tolist()
    assert active_units(s[0].numpy(), budget).tolist() == expected
    k = units_for_budget(budget, len(row))
    ranked = sorted((i for i, v in enumerate(row) if v > 0), key=lambda i: (-row[i], i))
    assert expected == sorted(ranked[:k])


def test_select_keeps_the_same_statistics_as_forward() -> None:
    s = torch.tensor([[0.5, -0.1, 2.0, 0.3]])
    a, b = SwanGate(4).eval(), SwanGate(4).eval()
    with torch.no_grad():
        a(s, 0.5)
    b.select(s[0].numpy(), 0.5)
    assert torch.equal(a.active_count, b.active_count) and float(a.active_count.sum()) == 2.0
    assert torch.equal(a.last_gates, b.last_gates)
    assert torch.equal(a.last_logits, b.last_logits)

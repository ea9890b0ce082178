from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from torch import Tensor

from swan_policy.policy import SwanPolicy
from swan_policy.train.losses import CompiledForward, bc_sandwich_loss, sandwich_budgets
from tests.conftest import random_obs, tiny_config


def test_sandwich_budgets() -> None:
    gen = torch.Generator().manual_seed(0)
    b = sandwich_budgets(0.25, 2, gen)
    assert b[:2] == [1.0, 0.25] and len(b) == 4 and all(0.25 <= x <= 1.0 for x in b)
    assert b == sandwich_budgets(0.25, 2, torch.Generator().manual_seed(0))
    assert sandwich_budgets(1.0, 3, gen) == [1.0]
    assert set(sandwich_budgets(0.25, 5, gen, levels=[0.5, 0.75])[2:]) <= {0.5, 0.75}
    with pytest.raises(ValueError, match="b_min must be in"):
        sandwich_budgets(0.0, 1, gen)


def test_sandwich_loss_trains_all_budgets() -> None:
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config())
    obs = random_obs(policy.config, 8)
    loss, info = bc_sandwich_loss(policy, obs, torch.zeros(8, 2), [1.0, 0.25, 0.5], 0.1, 0.5)
    loss.backward()
    assert {"bc_loss", "bc_loss@min", "sparsity", "active_fraction", "loss"} <= set(info)
    assert all(p.grad is not None for p in policy.head.out.parameters())
    first = policy.encoder.convs[0]
    assert first.gate_fc is not None and first.gate_fc.weight.grad is not None


def test_low_weight_scales_only_the_lower_budget_passes() -> None:
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config()).eval()  # eval: same gates on every call
    obs = random_obs(policy.config, 8)
    acts = torch.rand(8, 2)
    args = (policy, obs, acts, [1.0, 0.25, 0.5], 0.1, 0.5)
    full, _ = bc_sandwich_loss(*args)
    half, _ = bc_sandwich_loss(*args, low_weight=0.5)
    top, _ = bc_sandwich_loss(*args, low_weight=0.0)  # the b = 1 pass alone
    torch.testing.assert_close(half - top, 0.5 * (full - top))
    assert float((full - top).detach()) > 0


def test_logged_low_budget_losses_are_bc_and_distillation_apart() -> None:
    """``bc_loss@min`` is the smallest budget's MSE to the labels, like ``bc_loss`` at
    b = 1 (not the distillation-weighted mix), and ``distill@min`` its MSE to b = 1."""
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config()).eval()  # eval: the same gates on every call
    obs = random_obs(policy.config, 8)
    acts = torch.rand(8, 2, generator=torch.Generator().manual_seed(3)) * 2 - 1
    _, info = bc_sandwich_loss(policy, obs, acts, [1.0, 0.25, 0.5], 0.1, 0.5)
    with torch.no_grad():
        target = policy.normalize_actions(acts)
        full = policy.forward_normalized(obs, 1.0, mode="masked")
        low = policy.forward_normalized(obs, 0.25, mode="masked")
    assert info["bc_loss@min"] == pytest.approx(float(torch.mean((low - target) ** 2)), rel=1e-5)
    assert info["distill@min"] == pytest.approx(float(torch.mean((low - full) ** 2)), rel=1e-5)
    assert info["bc_loss"] == pytest.approx(float(torch.mean((full - target) ** 2)), rel=1e-5)


def _loss_and_grads(policy: SwanPolicy, forward: Any = None) -> tuple[dict[str, Any], list[Tensor]]:
    policy.zero_grad()
    obs = random_obs(policy.config, 8, seed=1)
    acts = torch.rand(8, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1
    loss, info = bc_sandwich_loss(policy, obs, acts, [1.0, 0.25, 0.5], 0.1, 0.5, forward=forward)
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros(()) for p in policy.parameters()]
    return info, grads


def test_compiled_forward_gives_the_eager_loss_gradients_and_gate_statistics() -> None:
    """Dynamo must replay the gates' side effects (the sparsity term and active fraction
    are read after the forward pass) and their custom straight-through backward."""
    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config(gate={"init_bias": 0.0, "sparsity": "l1"}))
    eager_info, eager_grads = _loss_and_grads(policy)
    compiled = CompiledForward(policy, backend="aot_eager")
    for _ in range(2):  # the second call runs the cached graphs
        info, grads = _loss_and_grads(policy, compiled)
        assert compiled.compiled is not None  # it did compile (no fallback)
        assert info.keys() == eager_info.keys()
        for key, value in eager_info.items():
            assert info[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        for g, ref in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-7)
    assert any(float(g.abs().sum()) > 0 for g in grads)


def test_compiled_forward_falls_back_to_eager_when_compiling_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_backend(gm: Any, example_inputs: Any) -> Any:
        raise RuntimeError("no C++ compiler")

    torch.manual_seed(0)
    policy = SwanPolicy(tiny_config())
    eager_info, _ = _loss_and_grads(policy)
    compiled = CompiledForward(policy, backend=broken_backend)
    with caplog.at_level(logging.WARNING):
        info, _ = _loss_and_grads(policy, compiled)
    assert compiled.compiled is None
    assert "torch.compile failed, training in eager mode" in caplog.text
    assert "no C++ compiler" in caplog.text
    assert info["loss"] == pytest.approx(eager_info["loss"], rel=1e-6)


def test_policies_trained_one_after_another_are_all_compiled() -> None:
    """bench_tradeoff trains ten policies in one process; dynamo's per-function recompile
    limit (8) must not send the later ones to eager mode without a word."""
    compiled_graphs = []

    def counting_backend(gm: Any, example_inputs: Any) -> Any:
        compiled_graphs.append(gm)
        return gm.forward

    for i in range(10):
        torch.manual_seed(i)
        policy = SwanPolicy(tiny_config())
        before = len(compiled_graphs)
        _loss_and_grads(policy, CompiledForward(policy, backend=counting_backend))
        assert len(compiled_graphs) > before, f"policy {i} ran eagerly"

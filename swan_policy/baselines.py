"""Static baselines for SWAN at equal compute (issue 8, ``scripts/bench_tradeoff.py``).

Each baseline is built from the package's own layers, so it shares the training
pipeline, MAC counting and evaluation with SWAN and only the thing being compared differs:

* **dense at matched width** (:func:`dense_config`): the ungated architecture with the
  per-layer unit counts of a SWAN ladder level -- the same layer shapes as that level's
  folded model, trained from scratch.
* **L1 structured pruning** (:func:`l1_prune`): a trained dense policy cut to given
  per-layer unit counts, keeping each layer's units with the largest L1 norm of their
  incoming weights (Li et al., "Pruning Filters for Efficient ConvNets", 2017), then
  fine-tuned by the caller.
* **slimmable** (:func:`make_slimmable`): one gated policy whose gates ignore the input:
  the gate networks' weights are zero and frozen, and their biases are a fixed,
  decreasing ramp. The free gate then keeps every unit, and budget ``b`` keeps the first
  ``ceil(b * N)`` units of each layer -- width prefixes, trained with the same sandwich
  rule as SWAN (Yu et al., "Slimmable Neural Networks", 2019). Its budget ladder, which
  ranks units by frequency and then by mean gate logit, is exactly the prefix order.
  :func:`matched_prefix_budget` picks the prefix budget whose MACs are nearest a target's
  (a SWAN level also drops units that are never active, so its MACs can be well under
  ``ceil(b * N)`` units' worth).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import torch

from swan_policy.compact import compact_policy
from swan_policy.config import PolicyConfig
from swan_policy.nn.gates import units_for_budget
from swan_policy.nn.layers import GatedConv2d
from swan_policy.policy import SwanPolicy


def layer_names(config: PolicyConfig) -> list[str]:
    """The gated layers' names, in order, for a policy built from ``config``."""
    n_enc = len(config.encoder.channels) if config.pixels else 0
    return [f"encoder.layers.{i}" for i in range(n_enc)] + [
        f"head.layers.{j}" for j in range(len(config.head.hidden))
    ]


def layer_widths(config: PolicyConfig) -> dict[str, int]:
    """Each gated layer's unit count, by name (as :func:`layer_names`)."""
    n_enc = len(config.encoder.channels) if config.pixels else 0
    widths = [*config.encoder.channels[:n_enc], *config.head.hidden]
    return dict(zip(layer_names(config), widths, strict=True))


def prefix_macs(config: PolicyConfig, budget: float) -> int:
    """MACs per sample of the width prefix ``ceil(budget * N)`` of every gated layer.

    Counting builds a throwaway policy; torch's global RNG is left as it was.
    """
    units = {k: units_for_budget(budget, n) for k, n in layer_widths(config).items()}
    with torch.random.fork_rng(devices=[]):
        return SwanPolicy(dense_config(config, units)).dense_macs()


def matched_prefix_budget(config: PolicyConfig, target_macs: float, lo: float = 0.0) -> float:
    """The width-prefix budget in ``[lo, 1]`` whose MACs are nearest ``target_macs``.

    A prefix only changes where some layer's ``ceil(b * N)`` steps, at ``b = i / N``, so
    those budgets are the candidates; MACs rise with the budget, so a bisection finds the
    first candidate at or above the target, and the nearer of it and the one before wins
    (the smaller budget on a tie). ``lo`` keeps the answer among the budgets a sandwich
    trained (its ``b_min``): no budget under ``lo`` is a candidate (the first breakpoint at
    or above ``lo`` keeps the same units as ``lo`` itself).

    Raises:
        ValueError: ``lo`` is not in ``[0, 1]``.
    """
    if not 0.0 <= lo <= 1.0:
        raise ValueError(f"lo must be in [0, 1], got {lo!r}")
    widths = layer_widths(config).values()
    points = sorted({i / n for n in widths for i in range(1, n + 1)})
    # the prefix at lo equals the prefix at the first breakpoint >= lo
    points = [b for b in points if b >= lo - 1e-12] or [1.0]
    macs: dict[int, int] = {}

    def at(i: int) -> int:
        if i not in macs:
            macs[i] = prefix_macs(config, points[i])
        return macs[i]

    i = bisect.bisect_left(range(len(points)), target_macs, key=at)
    if i == len(points):
        return points[-1]
    if i > 0 and abs(at(i - 1) - target_macs) <= abs(at(i) - target_macs):
        return points[i - 1]
    return points[i]


def dense_config(config: PolicyConfig, units: Mapping[str, int]) -> PolicyConfig:
    """The ungated policy config whose gated layers have ``units[name]`` units each.

    Raises:
        ValueError: if ``units`` does not name exactly the config's gated layers.
    """
    names = layer_names(config)
    if sorted(units) != sorted(names):
        raise ValueError(f"units must name the layers {names}, got {sorted(units)}")
    n_enc = len(config.encoder.channels) if config.pixels else 0
    channels = [int(units[n]) for n in names[:n_enc]] or config.encoder.channels
    hidden = [int(units[n]) for n in names[n_enc:]]
    return config.model_copy(
        update={
            "gate": config.gate.model_copy(update={"enabled": False}),
            "encoder": config.encoder.model_copy(update={"channels": channels}),
            "head": config.head.model_copy(update={"hidden": hidden}),
            "ref_units": None,
            "ungated": [],
        }
    )


def l1_scores(policy: SwanPolicy) -> dict[str, torch.Tensor]:
    """Per layer, each unit's L1 norm of its incoming weights (the pruning criterion)."""
    scores = {}
    for name, layer in policy.gated_layers().items():
        w = layer.conv.weight if isinstance(layer, GatedConv2d) else layer.linear.weight
        scores[name] = w.detach().abs().flatten(1).sum(1)
    return scores


@torch.no_grad()
def l1_prune(policy: SwanPolicy, units: Mapping[str, int]) -> SwanPolicy:
    """``policy`` with only the ``units[layer]`` largest-L1 units of each layer.

    Layers are pruned independently; a unit's incoming weights lose the pruned units of
    the layer before it. The result is an exact sub-network of ``policy`` (no
    fine-tuning here).

    Raises:
        ValueError: a layer is unknown, or a count is outside ``[1, layer units]``.
    """
    layers = policy.gated_layers()
    keep: dict[str, torch.Tensor] = {}
    for name, k in units.items():
        if name not in layers:
            raise ValueError(f"unknown layer {name!r}; layers: {', '.join(layers)}")
        n = layers[name].num_units
        if not 1 <= k <= n:
            raise ValueError(f"{name}: cannot keep {k} of {n} units")
    for name, s in l1_scores(policy).items():
        k = int(units.get(name, s.numel()))
        keep[name] = torch.topk(s, k).indices.sort().values
    return compact_policy(policy, keep)


@torch.no_grad()
def make_slimmable(policy: SwanPolicy) -> SwanPolicy:
    """Turn a gated policy's gates into fixed width prefixes, in place (see module doc).

    Every gate network's weights become zero, its biases ``2 - i / N`` for unit ``i``
    (all positive, strictly decreasing), and its parameters stop requiring gradients.

    Raises:
        ValueError: the policy has no gates.
    """
    layers = [m for m in policy.gated_layers().values() if m.gate is not None]
    if not layers:
        raise ValueError("make_slimmable needs a gated policy (policy.gate.enabled=true)")
    for layer in layers:
        n = layer.num_units
        ramp = 2.0 - torch.arange(n, dtype=torch.float32) / n
        if isinstance(layer, GatedConv2d):
            assert layer.gate_fc is not None
            params = list(layer.gate_fc.parameters())
            layer.gate_fc.weight.zero_()
            layer.gate_fc.bias.copy_(ramp)
        else:
            assert layer.gate_down is not None and layer.gate_up is not None
            params = [*layer.gate_down.parameters(), *layer.gate_up.parameters()]
            layer.gate_down.weight.zero_()
            layer.gate_up.weight.zero_()
            layer.gate_up.bias.copy_(ramp)
        for p in params:
            p.requires_grad_(False)
    return policy

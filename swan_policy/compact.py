"""Dense conversion: a smaller SwanPolicy holding only the kept units of each layer.

Units never active on calibration data can be removed exactly: their output was always
multiplied by a zero gate. The compacted layers keep their gates (on the remaining
units) and the unit count budgets refer to, so ``k = ceil(b * N)`` is unchanged and
the compact model reproduces the original on inputs whose active units were kept.
Issue 6 builds the ladder, gate folding and reporting on top of this.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from swan_policy.nn.encoders import keypoint_index
from swan_policy.nn.layers import compact_linear
from swan_policy.policy import SwanPolicy


def keep_from_stats(policy: SwanPolicy, threshold: float = 0.0) -> dict[str, Tensor]:
    """Per gated layer, indices of units active in more than ``threshold`` of samples.

    At least one unit per layer is kept (the most frequent), so shapes stay valid.
    """
    keep: dict[str, Tensor] = {}
    for name, gate in policy.gates().items():
        freq = gate.activation_frequency()
        idx = (freq > threshold).nonzero().squeeze(1)
        keep[name] = idx if idx.numel() else freq.argmax().reshape(1)
    return keep


@torch.no_grad()
def compact_policy(policy: SwanPolicy, keep: Mapping[str, Tensor]) -> SwanPolicy:
    """Build the smaller dense-structured policy that holds only ``keep[layer]`` units.

    Args:
        policy: a gated policy.
        keep: per gated layer name (see ``policy.gated_layers()``), sorted unit indices.
            Layers not listed keep all units.
    """
    layers = policy.gated_layers()
    unknown = sorted(set(keep) - set(layers))
    if unknown:
        raise KeyError(f"unknown layers in keep: {unknown}; known: {list(layers)}")
    full = {n: torch.arange(m.num_units) for n, m in layers.items()}
    kept = {n: torch.as_tensor(keep.get(n, full[n])).sort().values for n in layers}
    cfg = policy.config
    ref = {
        n: (m.gate.num_ref_units if m.gate is not None else m.num_units) for n, m in layers.items()
    }
    convs = policy.encoder.convs if policy.encoder is not None else []
    channels = [int(kept[f"encoder.layers.{i}"].numel()) for i in range(len(convs))]
    new_cfg = cfg.model_copy(
        update={
            "encoder": cfg.encoder.model_copy(
                update={"channels": channels or cfg.encoder.channels}
            ),
            "head": cfg.head.model_copy(
                update={
                    "hidden": [
                        int(kept[f"head.layers.{j}"].numel())
                        for j in range(len(policy.head.hidden))
                    ]
                }
            ),
            "ref_units": ref,
        }
    )
    # Assemble the compacted weights, layer by layer; a unit's inputs are the kept
    # units of the layer before it.
    state = dict(policy.state_dict())
    keep_in: Tensor | None = None
    for i, conv in enumerate(convs):
        k = kept[f"encoder.layers.{i}"]
        _put(state, f"encoder.layers.{i}.", conv.compacted(k, keep_in).state_dict())
        keep_in = k
    proprio_cols = policy.feature_dim + torch.arange(policy.proprio.out_dim)
    if keep_in is not None:
        keep_in = torch.cat([keypoint_index(keep_in), proprio_cols])
    else:
        keep_in = proprio_cols
    for j, hidden in enumerate(policy.head.hidden):
        k = kept[f"head.layers.{j}"]
        _put(state, f"head.layers.{j}.", hidden.compacted(k, keep_in).state_dict())
        keep_in = k
    _put(state, "head.out.", compact_linear(policy.head.out, keep_in).state_dict())
    new = SwanPolicy(new_cfg)
    new.load_state_dict(state, strict=True)
    for name, gate in new.gates().items():  # runtime setting, not in the state dict
        gate.inject_weight = policy.gates()[name].inject_weight
    return new.train(policy.training)


def _put(state: dict[str, Tensor], prefix: str, sub: Mapping[str, Tensor]) -> None:
    for k, v in sub.items():
        state[prefix + k] = v

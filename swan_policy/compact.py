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
    n_enc = len(policy.encoder.layers)
    new_cfg = cfg.model_copy(
        update={
            "encoder": cfg.encoder.model_copy(
                update={"channels": [int(kept[f"encoder.layers.{i}"].numel()) for i in range(n_enc)]}
            ),
            "head": cfg.head.model_copy(
                update={
                    "hidden": [
                        int(kept[f"head.layers.{j}"].numel()) for j in range(len(policy.head.layers))
                    ]
                }
            ),
            "ref_units": ref,
        }
    )
    new = SwanPolicy(new_cfg)
    keep_in: Tensor | None = None
    for i, layer in enumerate(policy.encoder.layers):
        k = kept[f"encoder.layers.{i}"]
        new.encoder.layers[i].load_state_dict(layer.compacted(k, keep_in).state_dict())
        keep_in = k
    assert keep_in is not None
    offset = policy.encoder.out_dim
    keep_in = torch.cat([keypoint_index(keep_in), offset + torch.arange(policy.proprio.out_dim)])
    for j, layer in enumerate(policy.head.layers):
        k = kept[f"head.layers.{j}"]
        new.head.layers[j].load_state_dict(layer.compacted(k, keep_in).state_dict())
        keep_in = k
    new.head.out.load_state_dict(compact_linear(policy.head.out, keep_in).state_dict())
    new.proprio.load_state_dict(policy.proprio.state_dict())
    for buf in ("proprio_mean", "proprio_std", "action_low", "action_high"):
        getattr(new, buf).copy_(getattr(policy, buf))
    for name, gate in new.gates().items():
        src = policy.gates()[name]
        gate.inject_weight = src.inject_weight
    return new.train(policy.training)

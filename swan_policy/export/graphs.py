"""The torch modules that become ONNX graphs, and the exporter call (DESIGN.md §4).

:class:`PolicyGraph` (a level at budget 1.0, optionally with the gate margin),
:class:`DenseLevelGraph` (a folded level with pre/post-processing fused into the weights),
:class:`GatedPolicyGraph` (the gated model with the budget as an input), and
:func:`export_graph`, which writes one through the dynamo exporter. Verification and the
bundle are in :mod:`swan_policy.export.onnx`, which re-exports everything here.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from swan_policy.budget.ladder import quiet
from swan_policy.deploy.manifest import ACTION, BUDGET, MARGIN
from swan_policy.nn.encoders import preprocess_pixels
from swan_policy.policy import SwanPolicy
from swan_policy.spec import PIXELS, PROPRIO

OPSET = 18


class ExportError(RuntimeError):
    """Export or its verification failed (checker, parity); nothing was written."""


# ---------------------------------------------------------------------- graph wrappers
class PolicyGraph(nn.Module):
    """Export wrapper: plain tensors in, clipped actions (and the gate margin) out.

    Runs the policy's masked forward at budget 1.0 (a ladder level: compacted, gates
    kept as masks or folded away), then clips to the action bounds. With ``margin``,
    a second output ``gate_margin [B]``: the mean ``|logit|`` over every gated unit
    (mean per layer, then over layers), the adaptive scheduler's cheap hardness signal,
    computed exactly as ``swan eval`` computes it in torch.
    """

    def __init__(self, policy: SwanPolicy, margin: bool = False) -> None:
        super().__init__()
        self.policy = quiet(policy.eval())
        self.margin = margin and bool(policy.gates())
        self.input_names = [PIXELS, PROPRIO] if policy.encoder is not None else [PROPRIO]
        self.output_names = [ACTION, MARGIN] if self.margin else [ACTION]

    def act(self, obs: dict[str, Tensor]) -> Tensor | tuple[Tensor, Tensor]:
        p = self.policy
        action = p(obs, 1.0, mode="masked")
        action = torch.minimum(torch.maximum(action, p.action_low), p.action_high)
        if not self.margin:
            return action
        per_layer = [
            logits.abs().mean(1)
            for g in p.gates().values()
            if (logits := g.last_logits) is not None
        ]
        return action, torch.stack(per_layer).mean(0)

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return self.act(dict(zip(self.input_names, inputs, strict=True)))


class DenseLevelGraph(nn.Module):
    """Export wrapper of an ungated (folded) level with its affine pre/post-processing
    folded into the weights: fewer ops, the same function.

    At batch 1 an onnxruntime call of a small model is mostly per-op overhead, so the
    graph drops every op that a weight can absorb (exact up to float rounding; the
    parity check compares with the policy's own unfused forward):

    * pixels: ``conv((x / 255 - 0.5), W) + b = conv(x, W / 255) + (b - 0.5 * sum W)``
      (valid because the first conv has no padding; ``input_norm="image"`` stays in the
      graph, as it depends on the image);
    * proprio: ``W ((p - mean) / std) + b = (W / std) p + (b - (W / std) mean)`` in the
      first layer that reads it (the proprio MLP, or the head's first layer);
    * actions: ``low + (tanh(z) + 1) * (high - low) / 2 = tanh(z) * s + c``, then clip
      (one ``Clip`` when every dimension has the same bounds; nothing but the tanh for
      the common ``[-1, 1]`` box).
    """

    scale: Tensor
    offset: Tensor

    def __init__(self, policy: SwanPolicy) -> None:
        super().__init__()
        if policy.gates():
            raise ValueError("DenseLevelGraph needs an ungated (folded) level")
        p = copy.deepcopy(policy).eval()
        with torch.no_grad():
            enc = p.encoder
            # per-image standardisation has no weight to fold into; it stays in the graph
            self.fold_pixels = enc is not None and enc.input_norm == "fixed"
            if enc is not None and self.fold_pixels:
                first = enc.convs[0].conv
                if _padding_of(first) != 0:
                    raise ValueError("pixel normalisation folding needs an unpadded first conv")
                first.bias -= 0.5 * first.weight.sum((1, 2, 3))  # type: ignore[operator]  # bias: Tensor | None
                first.weight /= 255.0
            # the layer that reads the normalised proprio, and which of its input columns
            target, cols = (
                (p.proprio.linear, slice(None))
                if p.proprio.linear is not None
                else (p.head.hidden[0].linear, slice(p.feature_dim, None))
            )
            w = target.weight[:, cols] / p.proprio_std
            target.bias.sub_(w @ p.proprio_mean)
            target.weight[:, cols] = w
        self.policy = p
        low, high = p.action_low.tolist(), p.action_high.tolist()
        same = len(set(low)) == 1 and len(set(high)) == 1
        self.box = (low[0], high[0]) if same else None
        self.unit_box = self.box == (-1.0, 1.0)
        scale = 0.5 * (p.action_high - p.action_low)
        self.register_buffer("scale", scale.clone())
        self.register_buffer("offset", (p.action_low + scale).clone())
        self.input_names = [PIXELS, PROPRIO] if p.encoder is not None else [PROPRIO]
        self.output_names = [ACTION]

    def forward(self, *inputs: Tensor) -> Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        p = self.policy
        parts = []
        if p.encoder is not None:
            # NHWC uint8 -> contiguous NCHW float (a fixed normalisation is folded into the
            # first conv; a channels-last view would make the exporter specialise the batch)
            px = named[PIXELS]
            x = (
                px.permute(0, 3, 1, 2).to(torch.float32).contiguous()
                if self.fold_pixels
                else preprocess_pixels(px, p.encoder.input_norm)
            )
            for conv in p.encoder.convs:
                x = torch.relu(conv.conv(x))
            parts.append(p.encoder.pool(x))
        proprio = named[PROPRIO].to(torch.float32)
        lin = p.proprio.linear
        parts.append(torch.relu(lin(proprio)) if lin is not None else proprio)
        h = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for layer in p.head.hidden:
            h = torch.relu(layer.linear(h))
        a = torch.tanh(p.head.out(h))
        if self.unit_box:  # bounds [-1, 1]: tanh already is the action (|tanh| <= 1)
            return a
        a = a * self.scale + self.offset
        if self.box is not None:  # the same bounds on every dimension: one Clip op
            return torch.clamp(a, self.box[0], self.box[1])
        return torch.minimum(torch.maximum(a, p.action_low), p.action_high)


def _padding_of(conv: nn.Conv2d) -> int:
    pad = conv.padding
    return -1 if isinstance(pad, str) else int(max(pad))


class GatedPolicyGraph(nn.Module):
    """The full gated model with the budget as an input (``budget [B] float32``).

    For analysis (per-unit gating in-graph was never faster than the level graphs).
    The budget cap ``k = ceil(b * N_ref)`` is computed in-graph: a unit is on when its
    logit is positive and at least the k-th largest (a sort, no data-dependent shape).
    Exact logit ties at the k-th place may keep more than k units, where ``torch.topk``
    keeps exactly k.
    """

    def __init__(self, policy: SwanPolicy) -> None:
        super().__init__()
        if not policy.gates():
            raise ExportError("--gated needs a gated policy (policy.gate.enabled=false)")
        self.policy = quiet(policy.eval())
        self.input_names = ([PIXELS] if policy.encoder is not None else []) + [PROPRIO, BUDGET]
        self.output_names = [ACTION]

    @staticmethod
    def _mask(logits: Tensor, budget: Tensor, ref: int) -> Tensor:
        n = logits.shape[1]
        k = torch.clamp(torch.ceil(budget * ref - 1e-6), 1, n).to(torch.int64)  # [B]
        ordered = torch.sort(logits, dim=1, descending=True).values
        kth = torch.gather(ordered, 1, (k - 1).unsqueeze(1))
        return ((logits > 0) & (logits >= kth)).to(logits.dtype)

    def forward(self, *inputs: Tensor) -> Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        p, budget = self.policy, named[BUDGET].to(torch.float32)
        parts = []
        if p.encoder is not None:
            x = preprocess_pixels(named[PIXELS], p.encoder.input_norm)
            g: Tensor | None = None
            for conv in p.encoder.convs:
                assert conv.gate is not None
                g = self._mask(conv.gate_logits(x), budget, conv.gate.num_ref_units)
                x = torch.relu(conv.conv(x)) * g[:, :, None, None]
            assert g is not None
            parts.append(p.encoder.pool(x) * g.repeat_interleave(2, dim=1))
        proprio = named[PROPRIO].to(torch.float32)
        parts.append(p.proprio((proprio - p.proprio_mean) / p.proprio_std))
        h = torch.cat(parts, dim=1)
        for layer in p.head.hidden:
            assert layer.gate is not None
            g = self._mask(layer.gate_logits(h), budget, layer.gate.num_ref_units)
            h = torch.relu(layer.linear(h)) * g
        a = torch.tanh(p.head.out(h))
        a = p.action_low + (a + 1.0) * 0.5 * (p.action_high - p.action_low)
        return torch.minimum(torch.maximum(a, p.action_low), p.action_high)


# ---------------------------------------------------------------------- ONNX files
def export_graph(module: nn.Module, example: Sequence[Tensor], path: Path) -> None:
    """Dynamo export of a wrapper to one self-contained file, dynamic batch axis."""
    input_names: list[str] = list(module.input_names)  # type: ignore[arg-type]  # Module.__getattr__
    output_names: list[str] = list(module.output_names)  # type: ignore[arg-type]  # Module.__getattr__
    batch = torch.export.Dim("batch", min=1, max=65536)
    # torch.onnx logs a warning per torchvision op it cannot register; we use none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        # the gates keep their last logits as attributes; torch.export warns about it
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(example),
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            # forward(*inputs): one varargs entry holding every input's batch axis
            dynamic_shapes=(tuple({0: batch} for _ in input_names),),
            verbose=False,
        )

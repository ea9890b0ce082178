"""What the conv gates cost in a training step: loss + backward, variants interleaved.

Arms (the Reach policy of ``configs/reach_bc.yaml`` on 64x64 pixels, batch 64, 1 thread):

* ``ungated``   -- gates disabled, the same widths;
* ``gated``     -- gated, the package's layer (the fused ``relu(z) * g`` of
  ``layers._GatedReLU``: ``dz`` from one ``threshold_backward`` on the gated output,
  ``dg`` from one ``vecdot``; the pooled gate input's gradient as a broadcast view);
* ``autograd``  -- gated, the unfused composition (``relu(z) * g`` and ``x.mean``, autograd's
  backward; the package before session 4);
* ``detached``  -- the package's layer with the gate network's pooled input detached;
* ``head-only`` -- conv gates off, head gates on.

Reports the minimum over repetitions (robust to a loaded machine) as a ratio to ``ungated``.

    python scripts/bench_gate_backward.py --reps 25
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from swan_policy.config import load_config
from swan_policy.nn import layers
from swan_policy.policy import SwanPolicy

Forward = Callable[..., tuple[Tensor, Tensor | None]]


def _autograd(self: layers.GatedConv2d, x: Tensor, budget: float = 1.0) -> Any:
    """The unfused composition the package used before session 4."""
    y = F.relu(self.conv(x))
    if self.gate is None:
        return y, None
    assert self.gate_fc is not None
    logits = F.linear(x.mean(dim=(2, 3)), self.gate_fc.weight, self.gate_fc.bias)
    g = self.gate(logits, budget)
    return y * g[:, :, None, None], g


def _detached(self: layers.GatedConv2d, x: Tensor, budget: float = 1.0) -> Any:
    z = self.conv(x)
    if self.gate is None:
        return F.relu(z), None
    g = self.gate(self.gate_logits(x.detach()), budget)
    return layers._GatedReLU.apply(z, g), g


def _head_only(self: layers.GatedConv2d, x: Tensor, budget: float = 1.0) -> Any:
    return F.relu(self.conv(x)), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/reach_bc.yaml")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config)

    def make(gated: bool) -> SwanPolicy:
        pc = cfg.policy.model_copy(
            update={
                "image_hw": (64, 64),
                "image_channels": 3,
                "proprio_dim": 6,
                "action_dim": 2,
                "gate": cfg.policy.gate.model_copy(update={"enabled": gated}),
            }
        )
        torch.manual_seed(0)
        return SwanPolicy(pc).train()

    gen = torch.Generator().manual_seed(0)
    b = args.batch
    batch = {
        "obs": {
            "pixels": torch.randint(0, 256, (b, 64, 64, 3), generator=gen, dtype=torch.uint8),
            "proprio": torch.randn(b, 6, generator=gen),
        },
        "actions": torch.rand(b, 2, generator=gen) * 2 - 1,
    }
    default: Forward = layers.GatedConv2d.forward
    arms: dict[str, tuple[SwanPolicy, Forward]] = {
        "ungated": (make(False), default),
        "gated": (make(True), default),
        "autograd": (make(True), _autograd),
        "detached": (make(True), _detached),
        "head-only": (make(True), _head_only),
    }
    times: dict[str, list[float]] = {k: [] for k in arms}
    try:
        for _ in range(args.reps):
            for name, (policy, forward) in arms.items():
                layers.GatedConv2d.forward = forward  # type: ignore[method-assign]  # arm swap
                t0 = time.perf_counter()
                for _ in range(3):
                    policy.zero_grad()
                    loss, _ = policy.loss(batch)
                    loss.backward()
                times[name].append((time.perf_counter() - t0) / 3)
    finally:
        layers.GatedConv2d.forward = default  # type: ignore[method-assign]  # restore
    base = min(times["ungated"])
    for name, ts in times.items():
        print(f"{name:11s} {min(ts) * 1e3:7.1f} ms/step  x{min(ts) / base:.2f}")


if __name__ == "__main__":
    main()

"""What the conv gates cost in a training step: loss + backward, variants interleaved.

Arms (the Reach policy of ``configs/reach_bc.yaml`` on 64x64 pixels, batch 64, 1 thread):

* ``ungated``   -- gates disabled, the same widths;
* ``gated``     -- gated, the package's layer (the fused ``relu(z) * g`` of
  ``layers._GatedReLU``: ``dz`` from one ``threshold_backward`` on the gated output,
  ``dg`` from one ``vecdot``; the pooled gate input's gradient as a broadcast view;
  under ``torch.compile`` the layer switches to ``layers._GatedReLUInductor``);
* ``vecdot``    -- gated, ``layers._GatedReLU`` whether compiled or not (with
  ``--compile``: the package before session 9);
* ``where-sum`` -- gated, ``layers._GatedReLUInductor`` whether compiled or not (without
  ``--compile``: what the compiled step's form would cost in eager mode);
* ``autograd``  -- gated, the unfused composition (``relu(z) * g`` and ``x.mean``, autograd's
  backward; the package before session 4);
* ``detached``  -- the package's layers with ``policy.gate.detach_input: true`` (every gate
  network reads a detached input);
* ``head-only`` -- conv gates off, head gates on.

Reports the minimum over repetitions (robust to a loaded machine) as a ratio to ``ungated``,
and the median over repetitions of each arm's time over ``ungated``'s in the same
repetition (the arms run back to back, so machine noise mostly cancels in the ratio).
``--compile`` runs every arm's forward through ``torch.compile`` (Inductor), as
``bc.compile`` does in training.

    python scripts/bench_gate_backward.py --reps 25
    python scripts/bench_gate_backward.py --reps 40 --compile --arms ungated gated vecdot
"""

from __future__ import annotations

import argparse
import statistics
import time
import types
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


def _fused(op: type[torch.autograd.Function]) -> Forward:
    """The package's layer with the gated ReLU ``op`` whether compiled or not."""

    def forward(self: layers.GatedConv2d, x: Tensor, budget: float = 1.0) -> Any:
        z = self.conv(x)
        if self.gate is None:
            return F.relu(z), None
        g = self.gate(self.gate_logits(x.detach() if self.gate.detach_input else x), budget)
        return op.apply(z, g), g

    return forward


def _head_only(self: layers.GatedConv2d, x: Tensor, budget: float = 1.0) -> Any:
    return F.relu(self.conv(x)), None


# gated?, conv forward (None: the package's), policy.gate.detach_input
ARMS: dict[str, tuple[bool, Forward | None, bool]] = {
    "ungated": (False, None, False),
    "gated": (True, None, False),
    "vecdot": (True, _fused(layers._GatedReLU), False),
    "where-sum": (True, _fused(layers._GatedReLUInductor), False),
    "autograd": (True, _autograd, False),
    "detached": (True, None, True),
    "head-only": (True, _head_only, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/reach_bc.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="Config override."
    )
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--compile", action="store_true", help="torch.compile each arm.")
    args = parser.parse_args()
    if "ungated" not in args.arms:
        parser.error("--arms must include ungated (the reference)")
    torch.set_num_threads(1)
    cfg = load_config(args.config, args.overrides)

    def make(gated: bool, forward: Forward | None, detach: bool) -> Callable[..., Tensor]:
        pc = cfg.policy.model_copy(
            update={
                "image_hw": (64, 64),
                "image_channels": 3,
                "proprio_dim": 6,
                "action_dim": 2,
                "gate": cfg.policy.gate.model_copy(
                    update={"enabled": gated, "detach_input": detach}
                ),
            }
        )
        torch.manual_seed(0)
        policy = SwanPolicy(pc).train()
        if forward is not None and policy.encoder is not None:
            for conv in policy.encoder.convs:  # this arm's layers only
                conv.forward = types.MethodType(forward, conv)  # type: ignore[method-assign]  # arm's variant
        fn = policy.forward_normalized
        return torch.compile(fn) if args.compile else fn

    gen = torch.Generator().manual_seed(0)
    b = args.batch
    obs = {
        "pixels": torch.randint(0, 256, (b, 64, 64, 3), generator=gen, dtype=torch.uint8),
        "proprio": torch.randn(b, 6, generator=gen),
    }
    target = torch.rand(b, 2, generator=gen) * 2 - 1
    arms = {name: make(*ARMS[name]) for name in args.arms}

    def step(fn: Callable[..., Tensor]) -> None:
        loss = F.mse_loss(fn(obs, 1.0, "masked"), target)
        loss.backward()  # parameter .grad accumulates: the same work every step

    for fn in arms.values():  # warm-up (compiles with --compile)
        for _ in range(2):
            step(fn)
    times: dict[str, list[float]] = {k: [] for k in arms}
    for _ in range(args.reps):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            for _ in range(3):
                step(fn)
            times[name].append((time.perf_counter() - t0) / 3)
    base = min(times["ungated"])
    mode = "compiled" if args.compile else "eager"
    print(f"loss + backward, batch {b}, 1 thread, {mode}, {args.reps} repetitions")
    for name, ts in times.items():
        ratio = statistics.median(t / u for t, u in zip(ts, times["ungated"], strict=True))
        print(
            f"{name:11s} {min(ts) * 1e3:7.1f} ms/step  x{min(ts) / base:.3f} (min)  "
            f"x{ratio:.3f} (median paired ratio)"
        )


if __name__ == "__main__":
    main()

"""Two parts of a BC step, timed beside the formulation each replaced (session 8):

* the DrQ random shift of a uint8 batch: the package's pad-and-crop against a clamped
  per-pixel index gather (the earlier implementation; both give the same pixels);
* the AdamW step: fused (the training loop's optimizer) against torch's per-tensor loop,
  for the gated policy and the ungated one of the same width.

Arms alternate within each repetition; medians in ms. One thread by default, so the
figures compare work, not scheduling.

    python scripts/bench_bc_parts.py --reps 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from swan_policy.config import load_config
from swan_policy.data.augment import random_shift
from swan_policy.policy import SwanPolicy


def gather_shift(pixels: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """The random shift as a clamped index gather (the package's earlier code)."""
    b, h, w, _ = pixels.shape
    shifts = torch.randint(-pad, pad + 1, (b, 2), generator=generator)
    rows = (torch.arange(h)[None, :] + shifts[:, :1]).clamp(0, h - 1)
    cols = (torch.arange(w)[None, :] + shifts[:, 1:]).clamp(0, w - 1)
    return pixels[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def median_ms(arms: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in arms}
    for fn in arms.values():
        fn()  # warm-up
    for _ in range(reps):
        for name, fn in arms.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/reach_bc.yaml"))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="Config override."
    )
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_bc_parts.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    pad = cfg.bc.shift_pad
    pixels = torch.randint(0, 256, (args.batch, 64, 64, 3), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    gen_ref = torch.Generator().manual_seed(0)
    if not torch.equal(random_shift(pixels, pad, gen), gather_shift(pixels, pad, gen_ref)):
        raise SystemExit("the two random shifts disagree")
    results = {
        f"random shift, batch {args.batch}, pad {pad}": median_ms(
            {
                "index gather (before)": lambda: gather_shift(pixels, pad, gen_ref),
                "pad and crop (now)": lambda: random_shift(pixels, pad, gen),
            },
            args.reps,
        )
    }
    pcfg = cfg.policy.model_copy(
        update={"image_hw": (64, 64), "image_channels": 3, "proprio_dim": 6, "action_dim": 2}
    )
    for gated in (False, True):
        policy = SwanPolicy(
            pcfg.model_copy(update={"gate": pcfg.gate.model_copy(update={"enabled": gated})})
        )
        params = list(policy.parameters())
        for p in params:
            p.grad = torch.randn_like(p)
        loop = torch.optim.AdamW(params, lr=1e-6, weight_decay=cfg.bc.weight_decay)
        fused = torch.optim.AdamW(params, lr=1e-6, weight_decay=cfg.bc.weight_decay, fused=True)
        name = f"AdamW step, {'gated' if gated else 'ungated'} policy ({len(params)} tensors)"
        results[name] = median_ms(
            {"per-tensor loop (before)": loop.step, "fused (now)": fused.step}, args.reps
        )
    threads = torch.get_num_threads()
    table = Table(title=f"BC step parts, {threads} thread(s), median of {args.reps}")
    for col in ("part", "before, ms", "now, ms", "speed-up"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for part, arms in results.items():
        before, now = arms.values()
        table.add_row(part, f"{before:.2f}", f"{now:.2f}", f"{before / now:.1f}x")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"median_ms": results, "threads": args.threads}, indent=2))


if __name__ == "__main__":
    main()

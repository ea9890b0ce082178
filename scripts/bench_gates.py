"""Batch-1, single-thread latency of SWAN execution modes vs the dense model.

For the encoder alone and for encoder + head, times the ungated dense model of the
same width, the masked mode and the sparse mode at budgets 1.0 / 0.5 / 0.25. Calls are
interleaved round-robin (so drift hits every arm alike) and summarised by the median.
Reports executed MACs (gates included) and the *fraction of the ideal speedup*:
``(t_dense / t_mode) / (MACs_dense / MACs_mode)``.

    python scripts/bench_gates.py --reps 300 --out runs/bench_gates.json

Gate statistics are switched off while timing (a deployed policy does not count).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from swan_policy.config import PolicyConfig
from swan_policy.policy import SwanPolicy


def build(channels: int, gated: bool, seed: int = 0) -> SwanPolicy:
    torch.manual_seed(seed)
    cfg = PolicyConfig(
        image_hw=(64, 64),
        image_channels=3,
        proprio_dim=8,
        action_dim=4,
        gate={"enabled": gated},
        encoder={"channels": [channels] * 4, "strides": [2, 1, 1, 1]},
    )
    policy = SwanPolicy(cfg).eval()
    policy.track_stats = False
    for gate in policy.gates().values():
        gate.track_stats = False
    return policy


def time_interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round-robin."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if i >= warmup:
                samples[name].append(dt)
    return {k: statistics.median(v) for k, v in samples.items()}


def _sum(macs: dict[str, torch.Tensor], prefix: str = "") -> float:
    return sum(float(v[0]) for k, v in macs.items() if k.startswith(prefix))


def bench_width(channels: int, budgets: list[float], reps: int, warmup: int) -> list[dict]:
    """Time every (part, mode, budget) arm of one encoder width; returns result rows."""
    gated, dense = build(channels, True), build(channels, False)
    gen = torch.Generator().manual_seed(0)
    obs = {
        "pixels": torch.randint(0, 256, (1, 64, 64, 3), generator=gen, dtype=torch.uint8),
        "proprio": torch.randn(1, 8, generator=gen),
    }
    pixels = obs["pixels"]
    fns: dict[str, Callable[[], object]] = {
        "encoder/dense": partial(dense.encoder, pixels),
        "policy/dense": partial(dense, obs),
    }
    macs: dict[str, float] = {}
    with torch.inference_mode():
        dense(obs)
        macs["policy/dense"] = _sum(dense.executed_macs())
        macs["encoder/dense"] = _sum(dense.executed_macs(), "encoder")
        for b in budgets:
            for mode in ("masked", "sparse"):
                gated(obs, b, mode=mode)
                macs[f"policy/{mode}@{b:g}"] = _sum(gated.executed_macs())
                macs[f"encoder/{mode}@{b:g}"] = _sum(gated.executed_macs(), "encoder")
                fns[f"policy/{mode}@{b:g}"] = partial(gated, obs, b, mode=mode)
                enc = gated.encoder.forward_sparse if mode == "sparse" else gated.encoder
                fns[f"encoder/{mode}@{b:g}"] = partial(enc, pixels, b)
        times = time_interleaved(fns, reps, warmup)
    rows = []
    for name in fns:
        part, rest = name.split("/")
        mode, _, budget = rest.partition("@")
        base = f"{part}/dense"
        speedup, ideal = times[base] / times[name], macs[base] / macs[name]
        rows.append(
            {
                "channels": channels,
                "part": part,
                "mode": mode,
                "budget": float(budget) if budget else None,
                "latency_us": times[name] * 1e6,
                "macs": macs[name],
                "speedup": speedup,
                "ideal_speedup": ideal,
                "fraction_of_ideal": speedup / ideal,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--reps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_gates.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console()
    results = []
    for channels in args.channels:
        rows = bench_width(channels, args.budgets, args.reps, args.warmup)
        results += rows
        table = Table(title=f"{channels} channels per conv layer, 64x64 input, batch 1, 1 thread")
        for col in (
            "part",
            "mode",
            "budget",
            "latency (us)",
            "MMACs",
            "speedup",
            "ideal",
            "fraction",
        ):
            table.add_column(col, justify="left" if col in ("part", "mode") else "right")
        for r in sorted(rows, key=lambda r: (r["part"], r["mode"] != "dense", -(r["budget"] or 2))):
            table.add_row(
                r["part"],
                r["mode"],
                f"{r['budget']:g}" if r["budget"] else "-",
                f"{r['latency_us']:.0f}",
                f"{r['macs'] / 1e6:.2f}",
                f"{r['speedup']:.2f}x",
                f"{r['ideal_speedup']:.2f}x",
                f"{r['fraction_of_ideal']:.2f}",
            )
        console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "reps": args.reps,
        "threads": torch.get_num_threads(),
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Per-step cost of the budget schedulers (what a controller pays on top of the policy).

Each scheduler picks budgets for ``--steps`` control steps fed with random latencies
(growing with the level) and observations; the arms are interleaved in blocks (machine
noise hits all alike) and the median microseconds per ``budget()`` call is reported.
Single-threaded. The arm ``deadline, uncached np.percentile`` is the deadline scheduler
as it was until session 25 (a fresh ``np.percentile`` for every p99 it asks for, up to
2 x levels + 1 per step), kept as the reference for the cached p99; ``adaptive 0.4 (obs),
numpy mean`` is session 24's ``obs`` signal. ``--pixels`` adds a 64x64 frame to every
observation.

    python scripts/bench_scheduler.py --blocks 5 --steps 2000 --window 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from swan_policy.budget.schedulers import (
    Adaptive,
    Deadline,
    Fixed,
    Scheduler,
    StepInfo,
    _as_unit_float,
)

LEVELS = (1.0, 0.75, 0.5, 0.25)


class UncachedDeadline(Deadline):
    """The deadline scheduler with session 24's p99: np.percentile on every request."""

    def p99(self, level: float) -> float | None:
        window = self._latency[level]
        if not window:
            return None
        return float(np.percentile(np.fromiter(window, float), 99, method="higher"))


class MeanAdaptive(Adaptive):
    """The adaptive scheduler with session 24's ``obs`` signal: numpy ``mean`` calls."""

    def hardness(self, step: StepInfo) -> float | None:
        raw: float | None = None
        if step.obs is not None:
            obs = {k: _as_unit_float(v) for k, v in step.obs.items()}
            if self._prev_obs is not None:
                prev = self._prev_obs
                raw = float(np.mean([np.abs(v - prev[k]).mean() for k, v in obs.items()]))
            self._prev_obs = obs
        return raw


def make_arms(window: int, deadline_ms: float) -> dict[str, Scheduler]:
    return {
        "fixed 0.5": Fixed(0.5, LEVELS),
        "adaptive 0.4 (obs)": Adaptive(0.4, signal="obs", levels=LEVELS),
        "adaptive 0.4 (obs), numpy mean": MeanAdaptive(0.4, signal="obs", levels=LEVELS),
        "deadline": Deadline(deadline_ms, window=window, levels=LEVELS),
        "deadline, uncached np.percentile": UncachedDeadline(
            deadline_ms, window=window, levels=LEVELS
        ),
    }


def play(s: Scheduler, n: int, seed: int, pixels: bool) -> tuple[list[float], list[float]]:
    """``n`` control steps; returns (seconds per ``budget()`` call, budgets chosen).

    The latency of a step grows with its level (``4 * b`` ms on average, gamma noise),
    so with a 5 ms deadline the deadline scheduler steps down, re-probes and steps up.
    """
    rng = np.random.default_rng(seed)
    times, chosen = [], []
    previous: float | None = None
    for t in range(n):
        obs = {"proprio": rng.normal(size=8).astype(np.float32)}
        if pixels:
            obs["pixels"] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        info = StepInfo(
            step=t,
            obs=obs,
            latency_ms=None if previous is None else float(4.0 * previous * rng.gamma(4.0, 0.25)),
        )
        t0 = time.perf_counter()
        previous = s.budget(info)
        times.append(time.perf_counter() - t0)
        chosen.append(previous)
    return times, chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=5, help="Blocks per arm (interleaved).")
    parser.add_argument("--steps", type=int, default=2000, help="Control steps per block.")
    parser.add_argument("--window", type=int, default=100, help="Deadline latency window.")
    parser.add_argument("--deadline-ms", type=float, default=5.0)
    parser.add_argument("--pixels", action="store_true", help="Add 64x64x3 uint8 frames.")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_scheduler.json"))
    args = parser.parse_args()
    arms = make_arms(args.window, args.deadline_ms)
    warm = np.random.default_rng(1).gamma(4.0, 0.25, size=args.window)
    for s in arms.values():  # warm every level up: full windows, as in a long run
        for b in LEVELS:
            for x in warm:
                s.observe_latency(b, float(4.0 * b * x))
    per_call: dict[str, list[float]] = {k: [] for k in arms}
    chosen: dict[str, list[float]] = {k: [] for k in arms}
    for block in range(args.blocks):
        for name, s in arms.items():
            s.reset()
            times, budgets = play(s, args.steps, 100 + block, args.pixels)
            per_call[name].append(statistics.median(times) * 1e6)
            chosen[name] += budgets
    same = chosen["deadline"] == chosen["deadline, uncached np.percentile"]
    same_adaptive = chosen["adaptive 0.4 (obs)"] == chosen["adaptive 0.4 (obs), numpy mean"]
    med = {k: statistics.median(v) for k, v in per_call.items()}
    table = Table(
        title=f"Scheduler cost per control step ({args.blocks} x {args.steps} steps, "
        f"window {args.window}, {len(LEVELS)} levels)"
    )
    for col in ("scheduler", "us per budget() (median)", "mean budget"):
        table.add_column(col, justify="left" if col == "scheduler" else "right")
    for name in arms:
        table.add_row(name, f"{med[name]:.1f}", f"{np.mean(chosen[name]):.3f}")
    Console().print(table)
    Console().print(f"cached and uncached deadline chose the same budgets: {same}")
    Console().print(f"both adaptive signals chose the same budgets: {same_adaptive}")
    result: dict[str, Any] = {
        "median_us_per_call": med,
        "blocks_us": per_call,
        "same_budgets_cached_uncached": same,
        "same_budgets_adaptive": same_adaptive,
        "pixels": args.pixels,
        "window": args.window,
        "levels": LEVELS,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if not (same and same_adaptive):
        raise SystemExit("a scheduler chose other budgets than its reference arm")


if __name__ == "__main__":
    main()

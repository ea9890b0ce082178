"""Soak test of the torch-free deploy runtime (RELIABILITY.md row 16; not run by pytest).

Runs :class:`swan_policy.deploy.PolicyRuntime` for ``--steps`` control steps (default
1,000,000) on a bundle, feeding random valid observations with invalid ones mixed in
(NaN/Inf, float64 overflow, CHW layout, float image, wrong shape or dtype, missing or
extra key, a list, not a dict). Every invalid one must be refused with
``ObservationError`` before onnxruntime sees it, every valid one must give a finite
action within the bounds, and nothing else may be raised. Reports steps/s, latency
percentiles (valid steps and rejections), RSS at the start (after warm-up), at the end
and its maximum (flat: end within 5% of start), and the counts; prints JSON.

Without ``--bundle`` it first exports a small random Reach-shaped policy (64x64x3
pixels, 6 proprio, 2 actions; levels 1.0/0.5/0.25) with the export API, in a
subprocess, so this process stays torch-free like a robot's controller::

    nice -n 5 .venv/bin/python scripts/soak_deploy.py --steps 1000000 --json soak.json

Exit status: 0 when there were no crashes, no misclassified inputs, no bad actions and
the RSS stayed flat; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

PIXELS_SHAPE = (64, 64, 3)
PROPRIO_DIM = 6
LEVELS = (1.0, 0.5, 0.25)


def build_bundle(out: Path) -> None:
    """Export a random (untrained) gated policy's ladder into ``out`` (imports torch)."""
    import torch

    from swan_policy.budget.ladder import calibrate_ladder
    from swan_policy.config import PolicyConfig
    from swan_policy.export.onnx import export_bundle
    from swan_policy.policy import SwanPolicy

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = PolicyConfig.model_validate(
        {
            "image_hw": PIXELS_SHAPE[:2],
            "image_channels": PIXELS_SHAPE[2],
            "proprio_dim": PROPRIO_DIM,
            "action_dim": 2,
            "encoder": {"channels": [8, 8], "strides": [2, 2], "kernel_size": 3},
            "head": {"hidden": [32, 32], "proprio_hidden": 16},
            "gate": {"init_bias": 0.0},
        }
    )
    policy = SwanPolicy(cfg).eval()
    rng = np.random.default_rng(0)
    calib: dict[str, np.ndarray] = {
        "pixels": rng.integers(0, 256, (64, *PIXELS_SHAPE), dtype=np.uint8),
        "proprio": rng.standard_normal((64, PROPRIO_DIM)).astype(np.float32),
    }
    ladder = calibrate_ladder(policy, calib, LEVELS, source="soak_deploy.py: random inputs")
    export_bundle(policy, ladder, out, real_obs=calib, gates="folded", name="soak")


def rss_bytes() -> int:
    """Resident set size now (Linux /proc; elsewhere the peak from getrusage)."""
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])
        return resident * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)


def invalid_makers(
    spec: dict[str, tuple[tuple[int, ...], str]],
) -> dict[str, Callable[[dict[str, np.ndarray]], Any]]:
    """Ways to break a valid observation (each must raise ObservationError)."""
    float_keys = [k for k, (_, dt) in spec.items() if dt != "uint8"]
    image_keys = [k for k, (shape, dt) in spec.items() if dt == "uint8" and len(shape) == 3]
    fk = float_keys[0]

    def with_value(key: str, value: Any) -> Callable[[dict[str, np.ndarray]], Any]:
        return lambda obs: {**obs, key: value(obs[key])}

    def poke(value: float) -> Callable[[np.ndarray], np.ndarray]:
        def f(a: np.ndarray) -> np.ndarray:
            out = a.astype(np.float64)
            out.flat[0] = value
            return out

        return f

    makers: dict[str, Callable[[dict[str, np.ndarray]], Any]] = {
        "nan": with_value(fk, poke(np.nan)),
        "inf": with_value(fk, poke(-np.inf)),
        "float64_overflow": with_value(fk, poke(1e300)),
        "int_dtype": with_value(fk, lambda a: a.astype(np.int32)),
        "wrong_shape": with_value(fk, lambda a: np.concatenate([a, a])),
        "as_list": with_value(fk, lambda a: a.tolist()),
        "missing_key": lambda obs: {k: v for k, v in obs.items() if k != fk},
        "extra_key": lambda obs: {**obs, "depth": np.zeros(3, np.float32)},
        "not_a_dict": lambda obs: list(obs.values()),
    }
    if image_keys:
        ik = image_keys[0]
        makers["chw_image"] = with_value(ik, lambda a: np.ascontiguousarray(a.transpose(2, 0, 1)))
        makers["float_image"] = with_value(ik, lambda a: a.astype(np.float32))
    return makers


def soak(args: argparse.Namespace, bundle: Path) -> dict[str, Any]:
    from swan_policy.deploy import ObservationError, PolicyRuntime

    runtime = PolicyRuntime.load(bundle, scheduler=args.scheduler, window=args.window)
    spec = {k: (v.shape, v.dtype) for k, v in runtime.obs_spec.entries.items()}
    rng = np.random.default_rng(args.seed)

    def valid(i: int) -> dict[str, np.ndarray]:
        obs = {}
        for k, (shape, dtype) in spec.items():
            if dtype == "uint8":
                obs[k] = rng.integers(0, 256, shape, dtype=np.uint8)
            else:  # float32 or float64 (both valid: cast by the runtime, never mutated)
                obs[k] = rng.standard_normal(shape).astype(np.float32 if i % 2 else np.float64)
        return obs

    pool = [valid(i) for i in range(args.pool)]
    makers = invalid_makers(spec)
    names = sorted(makers)
    bad_pool = [(names[i % len(names)], makers[names[i % len(names)]](pool[i])) for i in range(64)]
    # which steps get an invalid input: a fixed random pattern, drawn up front
    is_bad = rng.random(args.steps) < args.invalid_fraction
    lat = np.full(args.steps, np.nan)  # touched now, so it does not grow the RSS later
    low, high = runtime.action_low, runtime.action_high

    counts = {"valid": 0, "rejected": 0, "misclassified": 0, "bad_actions": 0, "crashes": 0}
    rejected_by_kind = dict.fromkeys(names, 0)
    crash_types: dict[str, int] = {}
    rss_samples: list[tuple[int, int]] = []
    rss_start = 0
    warmup = min(args.warmup, args.steps // 2)
    rss_every = max(1, args.steps // 200)
    clock = time.perf_counter
    t0 = t_start = clock()
    for step in range(args.steps):
        if step == warmup:
            rss_start = rss_bytes()
            rss_samples.append((step, rss_start))
            t_start = clock()
        if step and step % 5000 == 0:
            runtime.reset()  # an episode boundary every 5000 steps
        bad = bool(is_bad[step])
        kind, obs = bad_pool[step % len(bad_pool)] if bad else ("", pool[step % len(pool)])
        t = clock()
        try:
            action = runtime.act(obs)
        except ObservationError:
            lat[step] = clock() - t
            if bad:
                counts["rejected"] += 1
                rejected_by_kind[kind] += 1
            else:
                counts["misclassified"] += 1
            continue
        except Exception as e:  # a crash: counted and reported, the soak goes on
            counts["crashes"] += 1
            crash_types[type(e).__name__] = crash_types.get(type(e).__name__, 0) + 1
            continue
        lat[step] = clock() - t
        if bad:
            counts["misclassified"] += 1  # an invalid input got through
        else:
            counts["valid"] += 1
            if not (np.isfinite(action).all() and (action >= low).all() and (action <= high).all()):
                counts["bad_actions"] += 1
        if step % rss_every == 0 and step > warmup:
            rss_samples.append((step, rss_bytes()))
    t_end = clock()
    rss_end = rss_bytes()
    rss_samples.append((args.steps, rss_end))
    measured = args.steps - warmup
    ms = lat * 1e3
    ok_ms, bad_ms = ms[~is_bad], ms[is_bad]
    ok_ms, bad_ms = ok_ms[np.isfinite(ok_ms)], bad_ms[np.isfinite(bad_ms)]

    def pct(a: np.ndarray, q: float) -> float | None:
        return float(np.percentile(a, q)) if a.size else None

    growth = (rss_end - rss_start) / rss_start if rss_start else float("nan")
    # a leak grows in both halves; a one-time allocation (arena, lazily touched pages) not
    mid = min(rss_samples, key=lambda sr: abs(sr[0] - (warmup + args.steps) // 2))[1]
    second_half = (rss_end - mid) / mid if mid else float("nan")
    stats = runtime.stats()
    return {
        "bundle": str(bundle),
        "scheduler": args.scheduler,
        "steps": args.steps,
        "warmup_steps": warmup,
        "invalid_fraction": args.invalid_fraction,
        "seconds": t_end - t0,
        "steps_per_s": measured / (t_end - t_start) if t_end > t_start else None,
        "latency_ms": {
            "valid_p50": pct(ok_ms, 50),
            "valid_p99": pct(ok_ms, 99),
            "valid_max": float(ok_ms.max()) if ok_ms.size else None,
            "rejected_p50": pct(bad_ms, 50),
            "rejected_p99": pct(bad_ms, 99),
        },
        "rss_mb": {
            "start": rss_start / 2**20,
            "end": rss_end / 2**20,
            "max": max(r for _, r in rss_samples) / 2**20,
            "growth_pct": 100 * growth,
            "growth_second_half_pct": 100 * second_half,
        },
        "rss_flat_within_5pct": bool(abs(growth) <= 0.05),
        # (step, MB) every ~5% of the run after warm-up: where any growth happened
        "rss_curve_mb": [
            (st, round(r / 2**20, 2)) for st, r in rss_samples[:: max(1, len(rss_samples) // 20)]
        ],
        "invalid_inputs": int(is_bad.sum()),
        **counts,
        "rejected_by_kind": rejected_by_kind,
        "crash_types": crash_types,
        "mean_budget": stats["mean_budget"],
        "steps_per_level": {k: v["steps"] for k, v in stats["levels"].items()},
        "runtime_p99_ms": stats["overall"].get("p99_ms"),
        "torch_imported": "torch" in sys.modules,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="control steps")
    parser.add_argument("--bundle", type=Path, help="a bundle from `swan export` (default: build)")
    parser.add_argument("--scheduler", default="adaptive:0.6", help="runtime scheduler")
    parser.add_argument("--invalid-fraction", type=float, default=0.1, help="invalid inputs")
    parser.add_argument("--pool", type=int, default=256, help="distinct valid observations")
    parser.add_argument(
        "--warmup",
        type=int,
        default=50_000,
        help="steps before the RSS baseline (at most half the run): the runtime's latency "
        "rings (--window per level) are allocated lazily and fill during the first steps",
    )
    parser.add_argument("--window", type=int, default=10_000, help="runtime latency window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--build-bundle", type=Path, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    if args.build_bundle is not None:
        build_bundle(args.build_bundle)
        return 0
    if args.steps < 1 or not 0.0 <= args.invalid_fraction < 1.0:
        parser.error("--steps must be >= 1 and --invalid-fraction in [0, 1)")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        bundle = args.bundle
        if bundle is None:
            bundle = Path(tmp) / "bundle"
            cmd = [sys.executable, __file__, "--build-bundle", str(bundle)]
            subprocess.run(cmd, check=True)  # torch stays out of this process
        report = soak(args, bundle)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    ok = (
        report["crashes"] == 0
        and report["misclassified"] == 0
        and report["bad_actions"] == 0
        and report["rss_flat_within_5pct"]
        and not report["torch_imported"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

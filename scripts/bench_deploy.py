"""Batch-1, 1-thread onnxruntime latency of a bundle's levels vs SB3's CnnPolicy actor.

The reference is stable-baselines3's default ``CnnPolicy`` (PPO, NatureCNN) on the same
64x64x3 image, exported exactly as SB3's documentation shows: the legacy TorchScript
exporter (``dynamo=False``, opset 17) of ``policy(obs, deterministic=True)`` with a
float ``[1, 3, 64, 64]`` input (SB3's own preprocessing, ``/255``, in the graph; no
action clipping or unscaling). Our graphs take the raw ``uint8 [1, 64, 64, 3]`` image
and the proprio vector and include preprocessing and action post-processing.

Every arm is one onnxruntime session with the deploy runtime's options (1 intra-op
thread, full graph optimisation). Calls are interleaved: each round runs ``--reps``
calls of every arm, in an order rotated per round, so drift and other load hit every
arm alike; medians and p99 are over all calls of an arm. The process is pinned to one
CPU. Reports MACs per arm and, per level, the fraction of the ideal speedup
``(t_top / t_level) / (MACs_top / MACs_level)``; checks the issue's targets.

    python scripts/bench_deploy.py --bundle bundles/reach --out runs/bench_deploy.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from swan_policy.deploy.manifest import load_session, read_manifest


def sb3_cnn_actor(path: Path, hw: int = 64, action_dim: int = 2) -> int:
    """Export SB3's default CnnPolicy (PPO) the way SB3's docs do; returns its MACs."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    from swan_policy.nn.flops import count_flops

    class ImageEnv(gym.Env[np.ndarray, np.ndarray]):
        observation_space = gym.spaces.Box(0, 255, (hw, hw, 3), np.uint8)
        action_space = gym.spaces.Box(-1, 1, (action_dim,), np.float32)

        def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
            return self.observation_space.sample(), {}

        def step(self, action: np.ndarray) -> Any:
            return self.observation_space.sample(), 0.0, False, False, {}

    model = PPO("CnnPolicy", ImageEnv(), device="cpu", seed=0)

    class OnnxableSB3Policy(torch.nn.Module):  # verbatim from SB3's export guide
        def __init__(self, policy: torch.nn.Module) -> None:
            super().__init__()
            self.policy = policy

        def forward(self, observation: torch.Tensor) -> Any:
            return self.policy(observation, deterministic=True)

    onnx_policy = OnnxableSB3Policy(model.policy)
    dummy = torch.randn(1, *model.observation_space.shape)  # (3, 64, 64) after transpose
    torch.onnx.export(
        onnx_policy, dummy, str(path), opset_version=17, input_names=["input"], dynamo=False
    )
    return count_flops(onnx_policy, dummy) // 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, action="append", required=True, help="repeatable")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--reps", type=int, default=50, help="calls per arm per round")
    ap.add_argument("--warmup", type=int, default=100, help="calls per arm before timing")
    ap.add_argument("--int8", action="store_true", help="also time the kept int8 graphs")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin to (-1: no pinning)")
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON")
    args = ap.parse_args()
    if args.cpu >= 0:
        os.sched_setaffinity(0, {args.cpu})
    load_start = os.getloadavg()
    console = Console()
    rng = np.random.default_rng(0)

    arms: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sb3_path = Path(tmp) / "sb3_cnn.onnx"
        sb3_macs = sb3_cnn_actor(sb3_path)
        arms["SB3 CnnPolicy (PPO)"] = {
            "session": load_session(sb3_path),
            "feed": {"input": rng.uniform(0, 255, (1, 3, 64, 64)).astype(np.float32)},
            "macs": sb3_macs,
            "level": None,
        }
    for bundle in args.bundle:
        manifest = read_manifest(bundle)
        spec = manifest["obs_spec"]
        feed = {}
        for key in manifest["inputs"]:
            shape, dtype = (1, *spec[key]["shape"]), spec[key]["dtype"]
            if dtype == "uint8":
                feed[key] = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                feed[key] = rng.standard_normal(shape).astype(np.float32)
        for lvl in manifest["levels"]:
            variants = [("fp32", lvl)]
            q = lvl.get("int8")
            # only int8 graphs the export judged in closed loop and kept (as the runtime)
            if args.int8 and isinstance(q, dict) and q.get("kept", False):
                variants.append(("int8", {**q, "macs": lvl["macs"]}))
            for precision, entry in variants:
                name = f"{manifest['name']} {manifest['gates']} {lvl['budget']:g}"
                name += " int8" if precision == "int8" else ""
                arms[name] = {
                    "session": load_session(bundle / entry["file"]),
                    "feed": feed,
                    "macs": int(lvl["macs"]),
                    "level": float(lvl["budget"]),
                    "bundle": manifest["name"],
                    "precision": precision,
                }

    names = list(arms)
    for name in names:  # warm-up: allocations, caches, the optimiser's first runs
        sess, feed = arms[name]["session"], arms[name]["feed"]
        for _ in range(args.warmup):
            sess.run(None, feed)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sess, feed, out = arms[name]["session"], arms[name]["feed"], samples[name]
            for _ in range(args.reps):
                t0 = time.perf_counter_ns()
                sess.run(None, feed)
                out.append((time.perf_counter_ns() - t0) / 1e3)
    load_end = os.getloadavg()

    sb3_name = names[0]
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        v = np.array(samples[name])
        results[name] = {
            "median_us": float(np.median(v)),
            "p99_us": float(np.percentile(v, 99)),
            "calls": int(v.size),
            "macs": arms[name]["macs"],
            "level": arms[name]["level"],
            "bundle": arms[name].get("bundle"),
            "precision": arms[name].get("precision"),
        }
    sb3_med = results[sb3_name]["median_us"]
    for res in results.values():
        res["x_sb3"] = res["median_us"] / sb3_med
        res["p99_over_p50"] = res["p99_us"] / res["median_us"]
        if res["level"] is not None:
            top = next(
                results[n]
                for n in names
                if results[n]["bundle"] == res["bundle"]
                and results[n]["precision"] == res["precision"]
                and results[n]["level"]
                == max(x["level"] for x in results.values() if x["bundle"] == res["bundle"])
            )
            speedup = top["median_us"] / res["median_us"]
            ideal = top["macs"] / res["macs"]
            res["x_top"] = res["median_us"] / top["median_us"]
            res["speedup"], res["ideal"] = speedup, ideal
            res["fraction_of_ideal"] = speedup / ideal if ideal > 1 else None

    table = Table(title=f"batch 1, 1 thread, onnxruntime; {args.rounds} x {args.reps} calls")
    for col in ("arm", "median us", "p99 us", "p99/p50", "MMACs", "x SB3", "x top", "of ideal"):
        table.add_column(col, justify="right")
    for name, res in results.items():
        frac = res.get("fraction_of_ideal")
        table.add_row(
            name,
            f"{res['median_us']:.1f}",
            f"{res['p99_us']:.1f}",
            f"{res['p99_over_p50']:.2f}",
            f"{res['macs'] / 1e6:.3f}",
            f"{res['x_sb3']:.2f}",
            f"{res['x_top']:.2f}" if "x_top" in res else "-",
            f"{frac:.2f}" if frac is not None else "-",
        )
    console.print(table)

    checks = []
    for bundle in {r["bundle"] for r in results.values() if r["bundle"]}:
        by_level = {
            r["level"]: r
            for r in results.values()
            if r["bundle"] == bundle and r["precision"] == "fp32"
        }
        if 1.0 in by_level:
            checks.append((f"{bundle}: level 1.0 <= 0.5x SB3", by_level[1.0]["x_sb3"], 0.5))
        if 1.0 in by_level and 0.25 in by_level:
            checks.append(
                (f"{bundle}: level 0.25 <= 0.35x level 1.0", by_level[0.25]["x_top"], 0.35)
            )
    worst = max(results.values(), key=lambda r: r["p99_over_p50"])
    checks.append(("every arm: p99 <= 2x p50 (worst)", worst["p99_over_p50"], 2.0))
    for label, value, limit in checks:
        verdict = "met" if value <= limit else "MISSED"
        console.print(f"{label}: {value:.2f} -> {verdict}")
    console.print(f"load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "results": results,
            "targets": [{"check": c, "value": v, "limit": lim} for c, v, lim in checks],
            "rounds": args.rounds,
            "reps": args.reps,
            "warmup": args.warmup,
            "load_start": load_start,
            "load_end": load_end,
            "machine": platform.platform(),
            "onnxruntime": __import__("onnxruntime").__version__,
        }
        args.out.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

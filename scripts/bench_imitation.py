"""Imitation results over seeds: train a config with several seeds, evaluate each budget.

For each seed, runs ``swan train`` (BC + DAgger as the config says) into
``<out>/<config>-seed<k>`` and evaluates the final/best policy on the same evaluation
episodes at each budget; reports success rate, return and MACs per step as mean ± std
over seeds, as a rich table and JSON.

Each seed's evaluations are also kept in its run (``bench_eval.json``, one entry per
episodes / budgets / evaluation seed) and reused by a later call with the same three (the
evaluator plays the same episodes whatever the worker count), so seeds trained by separate
processes in parallel are aggregated by one more call over all of them without evaluating
again, and a finished run can be evaluated on more episodes (``--episodes 200``) without
losing its earlier evaluation or its training time. ``--resume`` continues a seed whose
training was interrupted from its last checkpoint instead of starting it again.
``--checkpoint last`` evaluates each seed's last checkpoint instead of its best policy (a
run continued past its end by ``swan train --resume`` with more DAgger rounds keeps the
earlier best unless the new end-of-training evaluation beats it).

    python scripts/bench_imitation.py --config configs/reach_bc.yaml --seeds 0 1 2 --episodes 50
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.evaluate import evaluate_policy
from swan_policy.train.checkpoint import latest_checkpoint, minutes_so_far, start_segment
from swan_policy.train.imitation import train


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def read_store(cache: Path) -> dict[str, Any]:
    """A finished run's ``bench_eval.json``: its training time and every evaluation so far.

    A file from before the store kept several evaluations (one entry, its ``key`` at the
    top level) is read as a store of that one evaluation.
    """
    if not cache.is_file():  # trained elsewhere: the training time is unknown
        return {"train_minutes": None, "evals": []}
    saved = json.loads(cache.read_text())
    if "evals" in saved:
        return saved
    keep = ("key", "results", "dense_macs")
    return {"train_minutes": saved["train_minutes"], "evals": [{k: saved[k] for k in keep}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_imitation"))
    parser.add_argument("--fresh", action="store_true", help="Retrain seeds already done.")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Resume an unfinished seed from its last checkpoint (default: start it again).",
    )
    parser.add_argument(
        "--checkpoint",
        choices=("best", "last"),
        default="best",
        help="Evaluate each seed's best policy (the default) or its last checkpoint, e.g. "
        "of a run continued with swan train --resume: its best is only replaced where the "
        "end-of-training evaluation beats the earlier one.",
    )
    args = parser.parse_args()
    console = Console()
    per_seed = []
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.overrides, f"seed={seed}"])
        run = args.out / f"{args.config.stem}-seed{seed}"
        if args.fresh and run.exists():
            shutil.rmtree(run)
        cache = run / "bench_eval.json"
        t0 = time.perf_counter()
        if not (run / "best").is_dir():
            resume = args.resume and run.is_dir() and latest_checkpoint(run) is not None
            before = minutes_so_far(run) if resume else 0.0
            if run.exists() and not resume:
                shutil.rmtree(run)
            start_segment(run, before)
            if resume:
                console.print(f"seed {seed}: resuming after {before:.1f} min of training")
            train(cfg, run, resume=resume, show=True)
            store: dict[str, Any] = {
                "train_minutes": before + (time.perf_counter() - t0) / 60,
                "evals": [],
            }
            if resume:
                store["resumed"] = True  # train_minutes adds up the segments (minutes_so_far)
        else:
            store = read_store(cache)
        key: dict[str, Any] = {
            "episodes": args.episodes,
            "budgets": args.budgets,
            "eval_seed": cfg.eval.seed,
        }
        if args.checkpoint != "best":  # evaluations of the best policy keep their old key
            key["checkpoint"] = args.checkpoint
        entry = next((e for e in store["evals"] if e["key"] == key), None)
        if entry is None:
            policy = load_run_policy(run, args.checkpoint)
            results = evaluate_policy(
                policy, cfg.env, args.episodes, args.budgets, args.workers, cfg.eval.seed
            )
            entry = {
                "key": key,
                "results": [r.to_json() for r in results],
                "dense_macs": policy.dense_macs(),
            }
            store["evals"].append(entry)
            cache.write_text(json.dumps(store, indent=2))
        per_seed.append(
            {
                "seed": seed,
                "run": str(run),
                "train_minutes": store["train_minutes"],
                "results": entry["results"],
                "dense_macs": entry["dense_macs"],
            }
        )
        line = ", ".join(
            f"b={r['budget']:g}: {r['success_rate']:.0%}" for r in per_seed[-1]["results"]
        )
        minutes = per_seed[-1]["train_minutes"]
        took = "" if minutes is None else f" ({minutes:.1f} min)"
        console.print(f"seed {seed}: {line}{took}")
    cfg = load_config(args.config, args.overrides)
    table = Table(title=f"{cfg.env.id}: {len(args.seeds)} seeds x {args.episodes} episodes")
    for col in ("budget", "success (mean ± std)", "return", "MMACs/step", "of dense"):
        table.add_column(col, justify="right")
    summary = []
    for i, b in enumerate(args.budgets):
        succ = mean_std([s["results"][i]["success_rate"] for s in per_seed])
        ret = mean_std([s["results"][i]["return_mean"] for s in per_seed])
        macs = mean_std([s["results"][i]["macs_per_step"] for s in per_seed])
        dense = per_seed[0]["dense_macs"]
        summary.append({"budget": b, "success": succ, "return": ret, "macs": macs})
        table.add_row(
            f"{b:g}",
            f"{succ[0]:.1%} ± {succ[1]:.1%}",
            f"{ret[0]:.2f} ± {ret[1]:.2f}",
            f"{macs[0] / 1e6:.2f}",
            f"{macs[0] / dense:.0%}",
        )
    console.print(table)
    out = args.out / f"{args.config.stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "config": str(args.config),
                "overrides": args.overrides,
                "episodes": args.episodes,
                "summary": summary,
                "seeds": per_seed,
            },
            indent=2,
        )
    )
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()

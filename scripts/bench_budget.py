"""Budget trade-offs of trained runs: quality vs budget level, adaptive vs fixed, compaction.

Part 1 (``--runs``; one run per training seed, the same task): each run plays the same
evaluation episodes at every ladder level (1.0/0.75/0.5/0.25) and with the adaptive
scheduler at each ``--adaptive`` target; success, mean budget and mean executed MACs
per step are reported per row as mean ± std over the runs, with the issue's checks:

* the quality-vs-budget curve is monotone over the levels, within noise (a drop from a
  lower level to a higher one counts only beyond twice the binomial standard error);
* adaptive reaches the budget-1.0 success (within 2 points) at <= 50% of its MACs.

Part 2 (``--compact-run``): exact compaction (``--threshold 0``) of a run, e.g. one
trained with the sparsity regulariser: static-graph MACs before/after, parity on
held-out rollouts, success before/after.

    python scripts/bench_budget.py --runs runs/a runs/b runs/c --episodes 50 \\
        --adaptive 0.4 0.5 --out runs/bench_budget/reach.json
    python scripts/bench_budget.py --compact-run runs/reach_E --calib-episodes 20 \\
        --heldout-episodes 10 --out runs/bench_budget/compact_reach_E.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.evaluate import BudgetResult, evaluate_policy, plot_tradeoff


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def tradeoff(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    specs = [
        {"kind": "adaptive", "target": t, "signal": s} for t in args.adaptive for s in args.signals
    ]
    per_run: list[dict[str, Any]] = []
    env_id = None
    for run in args.runs:
        cfg = load_config(run / "config.yaml")
        env_id = env_id or cfg.env.id
        if cfg.env.id != env_id:
            raise SystemExit(f"error: {run} is on {cfg.env.id}, the others on {env_id}")
        policy = load_run_policy(run, args.checkpoint)
        t0 = time.perf_counter()
        results = evaluate_policy(
            policy, cfg.env, args.episodes, args.levels, args.workers, args.seed, schedulers=specs
        )
        dense = policy.dense_macs()
        plot_tradeoff(results, dense, run / "bench_budget.png", f"{run.name} ({cfg.env.id})")
        per_run.append(
            {
                "run": str(run),
                "dense_macs": dense,
                "minutes": (time.perf_counter() - t0) / 60,
                "results": [r.to_json() for r in results],
            }
        )
        console.print(f"{run}: evaluated in {per_run[-1]['minutes']:.1f} min")
        for r in results:
            console.print(
                f"  {r.label:24s} success {r.success_rate:6.1%}  mean b {r.mean_budget:.3f}  "
                f"MMACs {r.macs_per_step / 1e6:.3f} ({r.macs_per_step / dense:.0%} of dense)"
            )
    # aggregate over runs, row by row (every run has the same rows in the same order)
    rows = []
    for i, first in enumerate(per_run[0]["results"]):
        rs = [BudgetResult(**p["results"][i]) for p in per_run]
        succ = mean_std([r.success_rate for r in rs])
        macs = mean_std([r.macs_per_step for r in rs])
        dense = statistics.fmean(p["dense_macs"] for p in per_run)
        rows.append(
            {
                "label": first["label"],
                "budget": first["budget"],
                "scheduler": first["scheduler"],
                "success_mean": succ[0],
                "success_std": succ[1],
                "success_per_run": [r.success_rate for r in rs],
                "mean_budget": statistics.fmean(r.mean_budget for r in rs),
                "max_episode_mean_budget": max(max(r.episode_mean_budget) for r in rs),
                "macs_mean": macs[0],
                "macs_std": macs[1],
                "of_dense": macs[0] / dense,
            }
        )
    n = args.episodes * len(per_run)
    fixed = [r for r in rows if r["scheduler"] is None]
    # monotone within noise: success may rise as the budget falls by at most 2 binomial SE
    violations = []
    for hi, lo in zip(fixed, fixed[1:], strict=False):
        p = (hi["success_mean"] + lo["success_mean"]) / 2
        se = math.sqrt(max(p * (1 - p), 1e-9) * 2 / n)
        rise = lo["success_mean"] - hi["success_mean"]
        if rise > 2 * se:
            violations.append(f"{lo['label']} > {hi['label']} by {rise:.1%} (2 SE = {2 * se:.1%})")
    top = next((r for r in fixed if r["budget"] == 1.0), None)
    checks = []
    if top is not None:
        for r in rows:
            if r["scheduler"] is None:
                continue
            ok_s = r["success_mean"] >= top["success_mean"] - 0.02 - 1e-9
            ok_m = r["macs_mean"] <= 0.5 * top["macs_mean"] * (1 + 1e-9)
            checks.append(
                {
                    "label": r["label"],
                    "success_gap": r["success_mean"] - top["success_mean"],
                    "macs_ratio": r["macs_mean"] / top["macs_mean"],
                    "target_met": ok_s and ok_m,
                }
            )
    console.print(f"\n{env_id}: {len(per_run)} run(s) x {args.episodes} episodes per row\n")
    console.print(
        "| row | success (mean ± std) | per run | mean budget | max episode mean b | "
        "MMACs/step | of dense |"
    )
    console.print("|---|---|---|---|---|---|---|")
    for r in rows:
        console.print(
            f"| {r['label']} | {r['success_mean']:.1%} ± {r['success_std']:.1%} | "
            + "/".join(f"{100 * s:.0f}" for s in r["success_per_run"])
            + f" | {r['mean_budget']:.3f} | {r['max_episode_mean_budget']:.3f} | "
            f"{r['macs_mean'] / 1e6:.3f} | {r['of_dense']:.0%} |"
        )
    console.print(
        "monotone over levels (within 2 SE): "
        + ("yes" if not violations else "NO: " + "; ".join(violations))
    )
    for c in checks:
        console.print(
            f"{c['label']}: success {c['success_gap']:+.1%} vs budget 1.0 at "
            f"{c['macs_ratio']:.0%} of its MACs -> target {'met' if c['target_met'] else 'MISSED'}"
        )
    return {
        "env": env_id,
        "episodes": args.episodes,
        "seed": args.seed,
        "levels": args.levels,
        "schedulers": specs,
        "rows": rows,
        "monotone_violations": violations,
        "adaptive_checks": checks,
        "runs": per_run,
    }


def compaction(args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    from swan_policy.compact import compact_with_report

    out = []
    for run in args.compact_run:
        cfg = load_config(run / "config.yaml")
        policy = load_run_policy(run, args.checkpoint)
        t0 = time.perf_counter()
        _, report = compact_with_report(
            policy,
            cfg.env,
            args.calib_episodes,
            args.threshold,
            args.heldout_episodes,
            args.workers,
        )
        rec = {"run": str(run), "minutes": (time.perf_counter() - t0) / 60, **report.to_json()}
        out.append(rec)
        console.print(f"\ncompaction of {run} (threshold {args.threshold:g}):")
        console.print("| layer | units before | after | gate | MMACs before | after |")
        console.print("|---|---|---|---|---|---|")
        for layer in report.layers:
            console.print(
                f"| {layer.name} | {layer.units_before} | {layer.units_after} | "
                f"{layer.gate_after} | {layer.macs_before / 1e6:.3f} | "
                f"{layer.macs_after / 1e6:.3f} |"
            )
        console.print(
            f"static graph {report.macs_before / 1e6:.3f} -> {report.macs_after / 1e6:.3f} MMACs "
            f"(-{report.macs_reduction:.1%}); executed at b=1 "
            f"{report.executed_macs_before / 1e6:.3f} -> {report.executed_macs_after / 1e6:.3f}; "
            f"max |action diff| {report.max_action_diff:.2e} over {report.heldout_steps} held-out "
            f"states, unseen units {report.unseen_units}; success "
            f"{report.success_before:.0%} -> {report.success_after:.0%} "
            f"({report.heldout_episodes} held-out episodes)"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="*", default=[])
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--levels", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--adaptive", type=float, nargs="*", default=[0.4, 0.5])
    parser.add_argument("--signals", nargs="+", default=["action"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--compact-run", type=Path, nargs="*", default=[])
    parser.add_argument("--threshold", type=float, default=0.0)
    parser.add_argument("--calib-episodes", type=int, default=20)
    parser.add_argument("--heldout-episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=200)
    payload: dict[str, Any] = {"argv": vars(args) | {"runs": [str(r) for r in args.runs]}}
    payload["argv"]["compact_run"] = [str(r) for r in args.compact_run]
    payload["argv"]["out"] = str(args.out)
    if args.runs:
        payload["tradeoff"] = tradeoff(args, console)
    if args.compact_run:
        payload["compaction"] = compaction(args, console)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

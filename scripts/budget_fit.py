"""How well each budget fits a run's own training samples: BC error per budget and set.

For the demos and every DAgger round the run saved (``dagger/round_<r>.safetensors``),
draws ``--samples`` samples (seeded) and reports the mean squared error between the
policy's output at each ``--budgets`` level and the labels, in the normalised action
space the training loss uses (no augmentation, gates as at inference), plus the
distillation error of the smallest budget against b = 1. A low budget whose error stays
near b = 1's on the rounds' states fits what it is trained on and fails elsewhere; one
whose error grows on the rounds (the states the policy itself reaches) underfits them.

    python scripts/budget_fit.py --run runs/pickplace_bc --budgets 1 0.5 0.25
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.spec import PIXELS, PROPRIO
from swan_policy.train.bc import BCData, load_bc_data, load_labelled


def sample_sets(run: Path, demos: Path) -> dict[str, BCData]:
    """The demos, then each saved DAgger round in order."""
    sets = {"demos": load_bc_data(demos)}
    rounds = sorted(
        (int(m.group(1)), p)
        for p in (run / "dagger").glob("round_*.safetensors")
        if (m := re.fullmatch(r"round_(\d+)\.safetensors", p.name)) and m.group(1) != "0"
    )
    for r, path in rounds:
        sets[f"round_{r}"] = load_labelled(path)
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", default="last", help="best, last or a directory")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--samples", type=int, default=1024, help="per set (fewer: all)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demos", type=Path, default=None, help="default: the run's config")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    budgets = sorted(set(args.budgets), reverse=True)
    if budgets[0] != 1.0:
        budgets.insert(0, 1.0)  # the distillation reference
    policy = load_run_policy(args.run, args.checkpoint).eval()
    demos = args.demos or Path(load_config(args.run / "config.yaml").demos.path)
    gen = torch.Generator().manual_seed(args.seed)
    rows = []
    for name, data in sample_sets(args.run, demos).items():
        n = len(data.actions)
        idx = torch.randperm(n, generator=gen)[: min(args.samples, n)]
        sq = {b: 0.0 for b in budgets}
        distill = 0.0
        with torch.no_grad():
            for chunk in idx.split(args.batch):
                obs = {PIXELS: data.pixels[chunk], PROPRIO: data.proprio[chunk]}
                target = policy.normalize_actions(data.actions[chunk].float())
                out = {b: policy.forward_normalized(obs, b, mode="masked") for b in budgets}
                for b in budgets:
                    sq[b] += float(((out[b] - target) ** 2).mean(1).sum())
                distill += float(((out[budgets[-1]] - out[1.0]) ** 2).mean(1).sum())
        k = len(idx)
        rows.append(
            {
                "set": name,
                "samples": n,
                "drawn": k,
                "bc_mse": {f"{b:g}": sq[b] / k for b in budgets},
                "distill_mse": distill / k,
            }
        )
    table = Table(title=f"BC error (MSE, normalised actions) per budget: {args.run}")
    table.add_column("set")
    table.add_column("samples", justify="right")
    for b in budgets:
        table.add_column(f"b={b:g}", justify="right")
    table.add_column(f"b={budgets[-1]:g} / b=1", justify="right")
    table.add_column(f"distill b={budgets[-1]:g}", justify="right")
    for r in rows:
        mse = r["bc_mse"]
        low = mse[f"{budgets[-1]:g}"]
        ratio = low / mse["1"] if mse["1"] > 0 else float("nan")
        table.add_row(
            r["set"],
            str(r["samples"]),
            *(f"{mse[f'{b:g}']:.4f}" for b in budgets),
            f"{ratio:.2f}x",
            f"{r['distill_mse']:.4f}",
        )
    Console().print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"run": str(args.run), "checkpoint": args.checkpoint, "rows": rows}
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

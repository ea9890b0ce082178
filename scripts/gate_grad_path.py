"""How much of the backbone's gradient arrives through the gate networks?

A gate network reads its layer's input, so the straight-through gradient of the gates also
flows into the layers below (``policy.gate.detach_input: false``, the default). This
script takes a trained run, samples batches from its demos (augmented as in training),
and computes the behaviour-cloning sandwich loss's gradient twice per batch: as trained,
and with every gate's input detached. For each weight outside the gate networks it
reports ``|g_trained - g_detached| / |g_detached|``, the gate path's share of that
weight's gradient (mean over batches). Near 0: the gates' gradient barely touches the
backbone. The weights and the batches are the same in both passes.

    python scripts/gate_grad_path.py --run runs/push_bc --batches 5 --out runs/grad_path.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.train.bc import load_bc_data
from swan_policy.train.losses import bc_sandwich_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--demos", type=Path, help="Default: the run config's demos.path.")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--budgets",
        type=float,
        nargs="+",
        help="The sandwich's budgets, 1 first (default: 1, b_min and the config's levels).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cfg = load_config(args.run / "config.yaml")
    budgets = args.budgets or [1.0, cfg.bc.b_min, *cfg.bc.budget_levels]
    if budgets[0] != 1.0:
        raise SystemExit("error: --budgets must start with 1 (the distillation teacher)")
    policy = load_run_policy(args.run, "best").train()
    gates = list(policy.gates().values())
    if not gates:
        raise SystemExit(f"error: {args.run} has no gates")
    data = load_bc_data(args.demos or Path(cfg.demos.path))
    torch.manual_seed(args.seed)
    shares: dict[str, list[float]] = {}
    for _ in range(args.batches):
        obs, actions = data.sample(args.batch_size, cfg.bc.shift_pad)
        grads: dict[bool, dict[str, torch.Tensor]] = {}
        for detach in (False, True):
            for gate in gates:
                gate.detach_input = detach
            policy.zero_grad()
            loss, _ = bc_sandwich_loss(
                policy, obs, actions, budgets, 0.0, cfg.bc.distill_weight, cfg.bc.low_weight
            )
            loss.backward()
            grads[detach] = {
                n: p.grad.detach().clone()
                for n, p in policy.named_parameters()
                if p.grad is not None and n.endswith("weight") and ".gate" not in n
            }
        for name, ref in grads[True].items():
            diff = (grads[False][name] - ref).norm() / ref.norm().clamp(min=1e-12)
            shares.setdefault(name, []).append(float(diff))
    rows = [{"weight": n, "gate_path_share": statistics.fmean(v)} for n, v in shares.items()]
    for row in rows:
        print(f"{row['weight']:40s} {row['gate_path_share']:.3f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        summary = {"run": str(args.run), "budgets": budgets, "batches": args.batches, "rows": rows}
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

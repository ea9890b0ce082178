"""Which part limits a low budget: the vision encoder's or the action head's units?

Evaluates a trained run with the budget split between its parts. Each ``--split`` is one
row, a comma-separated list of ``module=budget`` (modules: ``encoder``, ``head``, or one
layer such as ``encoder.layers.3``; the rest of the policy runs at budget 1); every row
plays the same ``--episodes`` evaluation episodes (seeds ``--seed`` + i). A module is
pinned to its budget by wrapping its forward; the weights are unchanged. A run trained
with the sandwich rule has only seen equal budgets, so mixed rows are a probe, not a
trained operating point: ``encoder=0.25`` near the all-at-1 score says the encoder's
quarter of the channels still carries what the task needs and the head's quarter fails.

``module=open`` holds every gate in the module open instead (all its units run, whatever
its gate networks say; ``policy=open`` is the whole policy). At budget 1 a free gate may
still switch units off: an open row above the all-at-1 row says those choices cost the
trained network, one below it that the network relies on them.

    python scripts/budget_split.py --run runs/push_bc --episodes 30 \
        --split "" --split encoder=0.25 --split head=0.25 --split encoder=0.25,head=0.25 \
        --out runs/budget_split.json
    python scripts/budget_split.py --run runs/pickplace_bc --split "" --split policy=open
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.evaluate import evaluate_policy
from swan_policy.nn.gates import SwanGate
from swan_policy.policy import SwanPolicy

OPEN = "open"  # a split value: every gate of the module held open
Split = dict[str, float | str]  # module -> budget or OPEN


def pin_budget(module: Any, budget: float) -> Callable[[], None]:
    """Make ``module`` run at ``budget`` whatever budget its caller passes; returns undo."""
    forward, forward_sparse = module.forward, module.forward_sparse

    def pinned(x: Any, _budget: float = 1.0) -> Any:
        return forward(x, budget)

    def pinned_sparse(x: Any, _budget: float = 1.0) -> Any:
        return forward_sparse(x, budget)

    module.forward, module.forward_sparse = pinned, pinned_sparse

    def undo() -> None:
        del module.forward, module.forward_sparse  # back to the class's methods

    return undo


def open_gates(module: Any) -> Callable[[], None]:
    """Hold every gate in ``module`` open: each gate decides on all-positive logits at
    budget 1, so every unit runs and the statistics still count. Returns undo."""
    gates = [m for m in module.modules() if isinstance(m, SwanGate)]
    for gate in gates:
        forward, select = gate.forward, gate.select

        def opened(logits: Any, _budget: float = 1.0, _f: Any = forward) -> Any:
            return _f(torch.ones_like(logits), 1.0)

        def opened_select(logits: Any, _budget: float = 1.0, _s: Any = select) -> Any:
            return _s(np.ones_like(logits), 1.0)

        gate.__dict__.update(forward=opened, select=opened_select)  # instance attributes

    def undo() -> None:
        for gate in gates:
            del gate.forward, gate.select

    return undo


def parse_split(text: str) -> Split:
    """``"encoder=0.25,head=open"`` -> ``{"encoder": 0.25, "head": "open"}`` (``""``: none)."""
    out: Split = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --split item {item!r} is not module=budget")
        out[name.strip()] = OPEN if value.strip() == OPEN else float(value)
    return out


def split_label(split: Split) -> str:
    items = [f"{k}={v if v == OPEN else f'{v:g}'}" for k, v in split.items()]
    return ", ".join(items) or "all at 1"


def evaluate_split(
    policy: SwanPolicy,
    env_cfg: Any,
    split: Split,
    episodes: int,
    workers: int,
    seed: int,
) -> dict[str, Any]:
    modules = {}
    for name, b in split.items():
        try:
            modules[name] = policy.get_submodule("" if name == "policy" else name)
        except AttributeError:
            raise SystemExit(f"error: the policy has no module {name!r}") from None
        if b != OPEN and not hasattr(modules[name], "forward_sparse"):
            raise SystemExit(f"error: {name!r} takes no budget")
    undo = [
        pin_budget(modules[name], b) if isinstance(b, float) else open_gates(modules[name])
        for name, b in split.items()
    ]
    try:
        (res,) = evaluate_policy(policy, env_cfg, episodes, [1.0], workers=workers, seed=seed)
    finally:
        for u in undo:
            u()
    return {
        "split": split,
        "success_rate": res.success_rate,
        "return_mean": res.return_mean,
        "macs_per_step": res.macs_per_step,
        "episodes": res.episodes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--split",
        action="append",
        default=None,
        help='One row: "module=budget,..." ("" = everything at 1; a budget may be "open", '
        'the module "policy"). Repeat for more rows.',
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows.")
    args = parser.parse_args()
    policy = load_run_policy(args.run, args.checkpoint).eval()
    env_cfg = load_config(args.run / "config.yaml").env
    splits = [parse_split(t) for t in (args.split or ["", "encoder=0.25", "head=0.25"])]
    rows = []
    for split in splits:
        row = evaluate_split(policy, env_cfg, split, args.episodes, args.workers, args.seed)
        rows.append(row)
        label = split_label(split)
        print(
            f"{label:40s} success {100 * row['success_rate']:5.1f}%  "
            f"return {row['return_mean']:7.2f}  MMACs/step {row['macs_per_step'] / 1e6:.3f}",
            flush=True,
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"run": str(args.run), "checkpoint": args.checkpoint, "rows": rows}
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

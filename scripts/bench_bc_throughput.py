"""BC training throughput: gated vs ungated encoder of the same width, same loop.

Runs :func:`swan_policy.train.bc.bc_update` (sampling, random shift, loss,
backward, AdamW) on random 64x64 data for each arm, alternating blocks of steps between
arms (so machine noise hits all alike), and reports the median samples/s per arm, and
the gate cost as the median over blocks of ungated's rate over gated's in the adjacent
block (a paired ratio: slow spells of the machine hit both arms of a pair):

* ``ungated``  -- the same architecture with gates disabled (single budget);
* ``gated``    -- SWAN gates, single budget (b = 1): the cost of the gates themselves;
* ``gated+sandwich`` -- the default training step (b = 1, b_min, one random budget).

``--compile`` adds the same three arms with ``bc.compile`` (``torch.compile`` of the
training forward pass; compiled during the warm-up, which then takes a minute or two).

    python scripts/bench_bc_throughput.py --config configs/reach_bc.yaml --blocks 6 --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from swan_policy.config import ExperimentConfig, load_config
from swan_policy.policy import SwanPolicy
from swan_policy.train.bc import BCData, SandwichLoss, bc_update, lr_lambda, make_optimizer


def make_arm(
    cfg: ExperimentConfig, gated: bool, sandwich: bool, compile: bool = False
) -> tuple[ExperimentConfig, dict]:
    over = cfg.model_copy(
        update={
            "policy": cfg.policy.model_copy(
                update={
                    "image_hw": (64, 64),
                    "image_channels": 3,
                    "proprio_dim": 6,
                    "action_dim": 2,
                    "gate": cfg.policy.gate.model_copy(update={"enabled": gated}),
                }
            ),
            "bc": cfg.bc.model_copy(update={"sandwich": sandwich}),
        }
    )
    torch.manual_seed(0)
    policy = SwanPolicy(over.policy).train()
    loss = SandwichLoss(
        policy, over.policy.gate.sparsity_weight, over.bc.distill_weight, compile=compile
    )
    opt = make_optimizer(policy, over)  # the training loop's optimizer
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(over, 10_000))
    return over, {"loss": loss, "opt": opt, "sched": sched}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/reach_bc.yaml"))
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="Config override."
    )
    parser.add_argument("--blocks", type=int, default=6, help="Blocks per arm (alternating).")
    parser.add_argument("--steps", type=int, default=10, help="BC steps per block.")
    parser.add_argument("--samples", type=int, default=4096, help="Random dataset size.")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_bc_throughput.json"))
    parser.add_argument("--compile", action="store_true", help="Add torch.compile'd arms.")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    gen = torch.Generator().manual_seed(0)
    data = BCData(
        torch.randint(0, 256, (args.samples, 64, 64, 3), generator=gen, dtype=torch.uint8),
        torch.randn(args.samples, 6, generator=gen),
        torch.rand(args.samples, 2, generator=gen) * 2 - 1,
    )
    arms = {
        "ungated": make_arm(cfg, gated=False, sandwich=False),
        "gated": make_arm(cfg, gated=True, sandwich=False),
        "gated+sandwich": make_arm(cfg, gated=True, sandwich=True),
    }
    if args.compile:
        arms["ungated, compiled"] = make_arm(cfg, gated=False, sandwich=False, compile=True)
        arms["gated, compiled"] = make_arm(cfg, gated=True, sandwich=False, compile=True)
        arms["gated+sandwich, compiled"] = make_arm(cfg, gated=True, sandwich=True, compile=True)
    rates: dict[str, list[float]] = {k: [] for k in arms}
    for name, (arm_cfg, s) in arms.items():  # warm-up (compiled arms: every sandwich budget)
        for _ in range(12 if "compiled" in name else 2):
            bc_update(s["loss"], s["opt"], s["sched"], data, arm_cfg)
    for _ in range(args.blocks):
        for name, (arm_cfg, s) in arms.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                bc_update(s["loss"], s["opt"], s["sched"], data, arm_cfg)
            rates[name].append(args.steps * arm_cfg.bc.batch_size / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    table = Table(
        title=f"BC throughput, 64x64 pixels, batch {cfg.bc.batch_size}, "
        f"{torch.get_num_threads()} threads ({args.blocks} x {args.steps} steps per arm)"
    )
    for col in ("arm", "samples/s (median)", "vs ungated"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for name, rate in med.items():
        table.add_row(name, f"{rate:.0f}", f"{rate / med['ungated']:.2f}x")
    Console().print(table)

    def paired_cost(ungated: str, gated: str) -> float:
        pairs = zip(rates[ungated], rates[gated], strict=True)
        return statistics.median(u / g for u, g in pairs) - 1.0

    gate_cost = paired_cost("ungated", "gated")
    Console().print(
        f"gate cost per sample (same loop, one budget): {gate_cost:+.1%} "
        f"(ratio of medians {med['ungated'] / med['gated'] - 1.0:+.1%})"
    )
    compiled_cost = None
    if args.compile:
        compiled_cost = paired_cost("ungated, compiled", "gated, compiled")
        Console().print(
            f"gate cost per sample, both compiled: {compiled_cost:+.1%} (ratio of medians "
            f"{med['ungated, compiled'] / med['gated, compiled'] - 1.0:+.1%})"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "median_samples_per_s": med,
                "blocks": rates,
                "gate_cost": gate_cost,
                "gate_cost_compiled": compiled_cost,
                "threads": torch.get_num_threads(),
                "config": str(args.config),
                "overrides": args.overrides,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""The imitation gap: how far a policy's actions are from the expert's, on whose states.

Plays ``--episodes`` episodes twice with the run's policy and the task's scripted expert
side by side (seeds ``--seed`` + i): once driven by the expert, once by the policy. At
every step both act on the same observation; the script reports the mean absolute action
difference per action dimension and per expert phase, for each driver, and the success
rate of each. A small gap on the expert's states and a large one on the policy's own is
compounding error (more DAgger helps); a large gap on both is underfitting.

    python scripts/imitation_gap.py --run runs/push_bc --episodes 20 --budget 1
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from swan_envs.experts import make_expert
from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.envs import make_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", default="last")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    policy = load_run_policy(args.run, args.checkpoint).eval()
    env = make_env(load_config(args.run / "config.yaml").env)
    expert = make_expert(env)
    rows = []
    try:
        for driver in ("expert", "policy"):
            gaps: dict[str, list[np.ndarray]] = defaultdict(list)
            successes = 0
            for i in range(args.episodes):
                obs, info = env.reset(seed=args.seed + i)
                done = False
                while not done:
                    action, label = policy.act(obs, args.budget), expert(obs)
                    gaps[expert.phase].append(np.abs(action - label))
                    step = label if driver == "expert" else action
                    obs, _, terminated, truncated, info = env.step(step)
                    done = terminated or truncated
                successes += bool(info.get("is_success"))
            every = np.concatenate([np.stack(v) for v in gaps.values()])
            for phase, values in [("all", list(every)), *gaps.items()]:
                per_dim = np.stack(values).mean(0)
                rows.append(
                    {
                        "driver": driver,
                        "phase": phase,
                        "steps": len(values),
                        "gap": float(per_dim.mean()),
                        "gap_per_dim": [float(v) for v in per_dim],
                        "success": successes / args.episodes,
                    }
                )
    finally:
        env.close()
    table = Table(title=f"{args.run}: mean |policy - expert| action, budget {args.budget}")
    for col in ("states of", "phase", "steps", "gap", "per action dim", "success"):
        table.add_column(col, justify="left" if col in ("states of", "phase") else "right")
    for r in rows:
        table.add_row(
            r["driver"],
            r["phase"],
            str(r["steps"]),
            f"{r['gap']:.3f}",
            " ".join(f"{v:.2f}" for v in r["gap_per_dim"]),
            f"{r['success']:.0%}" if r["phase"] == "all" else "",
        )
    Console(width=150).print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"run": str(args.run), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

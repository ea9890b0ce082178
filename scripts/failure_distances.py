"""How close failed episodes come: per failure, the closest and the final distance to the goal.

Plays ``--episodes`` evaluation episodes (seeds ``--seed`` + i) of a run's policy in this
process and, for every episode that does not succeed, prints its length and the
``info["distance"]`` the task reports (fingertip to target on Reach-v0): at the first
step, at its minimum and at the end. Tells a precision ceiling (failures that end just
outside the success radius) from wrong behaviour (failures that never get close).

It also asks the task's scripted expert what it would do on the failure's last ``--tail``
steps (the policy still drives) and prints the mean policy action beside the mean expert
label, and the expert's phases there: a policy stuck where the expert says "go" shows up
as a sign or size mismatch in one action dimension.

    python scripts/failure_distances.py --run runs/reach_bc --episodes 30 --budget 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from swan_envs.experts import make_expert
from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.envs import make_env


def mean_rounded(rows: list[np.ndarray]) -> list[float]:
    """Per-dimension mean of ``rows`` to 2 decimals (float64: no float32 digits)."""
    return [round(float(v), 2) for v in np.mean(rows, axis=0, dtype=np.float64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", default="last")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--tail", type=int, default=20, help="Last steps compared to the expert.")
    args = parser.parse_args()
    policy = load_run_policy(args.run, args.checkpoint).eval()
    env = make_env(load_config(args.run / "config.yaml").env)
    expert = make_expert(env)
    failures = []
    try:
        for i in range(args.episodes):
            obs, _ = env.reset(seed=args.seed + i)
            dist, acts, labels, phases, info, done = [], [], [], [], {}, False
            while not done:
                action = policy.act(obs, args.budget)
                labels.append(expert(obs))
                acts.append(action)
                phases.append(expert.phase)
                obs, _, terminated, truncated, info = env.step(action)
                if "distance" not in info:
                    raise SystemExit("error: this task reports no info['distance']")
                dist.append(float(info["distance"]))
                done = terminated or truncated
            if not info.get("is_success"):
                tail = slice(-args.tail, None)
                failures.append(
                    {
                        "seed": args.seed + i,
                        "steps": len(dist),
                        "first": dist[0],
                        "min": min(dist),
                        "min_step": int(np.argmin(dist)) + 1,
                        "final": dist[-1],
                        "tail_policy": mean_rounded(acts[tail]),
                        "tail_expert": mean_rounded(labels[tail]),
                        "tail_phases": sorted(set(phases[tail])),
                    }
                )
    finally:
        env.close()
    for f in failures:
        print(
            f"seed {f['seed']}: {f['steps']} steps, distance first {f['first']:.3f} "
            f"min {f['min']:.3f} (step {f['min_step']}) final {f['final']:.3f}; "
            f"last {args.tail} steps: policy {f['tail_policy']} expert {f['tail_expert']} "
            f"phases {f['tail_phases']}"
        )
    print(json.dumps({"episodes": args.episodes, "failures": len(failures), "rows": failures}))


if __name__ == "__main__":
    main()

"""Which part of a visual variation a policy fails under: success against what each reset drew.

Plays ``--episodes`` evaluation episodes (seeds ``--seed`` + i) of a run's policy in this
process, on the run's task with its own or another ``--variation``, and records for each
episode what the variation drew (``env.unwrapped.visual_params()``: light scale, camera
shift, colours, distractors), whether it succeeded and the scripted expert's phase at its
end (a failure's phase tells where it got stuck: reach, grasp, carry or place). Then, per
factor, the success rate in the lower, middle and upper third of the episodes sorted by
that factor (factors the variation leaves constant are left out). A factor the policy
does not mind gives three similar rates; one it fails under gives a slope.

Factors: ``light_scale``; ``camera_shift_cm`` (length of the shift); ``<geom>_contrast``,
the RGB distance between each recoloured geom and the floor (a target coloured like the
floor is hard to see); ``distractors`` (how many are shown).

    python scripts/variation_failures.py --run runs/bench_tradeoff/pickplace_hard/seed0/dense \
        --episodes 100 --out runs/variation_failures.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from swan_envs.experts import make_expert
from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.envs import make_env


def factors(params: dict[str, Any]) -> dict[str, float]:
    """The scalar factors of one episode's ``visual_params()``."""
    rgb = {name: np.asarray(c) for name, c in params["rgb"].items()}
    out = {
        "light_scale": params["light_scale"],
        "camera_shift_cm": 100 * float(np.linalg.norm(params["camera_shift"])),
        "distractors": float(params["distractors"]),
    }
    if "floor" in rgb:
        for name, colour in rgb.items():
            if name != "floor":
                out[f"{name}_contrast"] = float(np.linalg.norm(colour - rgb["floor"]))
    return out


def by_thirds(rows: list[dict[str, Any]], factor: str) -> list[dict[str, float]]:
    """Success rate and value range in each third of the episodes sorted by ``factor``."""
    ordered = sorted(rows, key=lambda r: r["factors"][factor])
    out = []
    for part in np.array_split(np.arange(len(ordered)), 3):
        if part.size == 0:
            continue
        chunk = [ordered[i] for i in part]
        values = [r["factors"][factor] for r in chunk]
        out.append(
            {
                "from": round(min(values), 3),
                "to": round(max(values), 3),
                "episodes": len(chunk),
                "success": round(float(np.mean([r["success"] for r in chunk])), 3),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", default="last")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--variation", help="Default: the run's own (env.kwargs.variation).")
    parser.add_argument("--out", type=Path, help="Also write the result as JSON here.")
    args = parser.parse_args()
    policy = load_run_policy(args.run, args.checkpoint).eval()
    env_cfg = load_config(args.run / "config.yaml").env
    if args.variation is not None:
        env_cfg = env_cfg.model_copy(
            update={"kwargs": {**env_cfg.kwargs, "variation": args.variation}}
        )
    env = make_env(env_cfg)
    if not hasattr(env.unwrapped, "visual_params"):
        raise SystemExit(f"error: {env_cfg.id} has no visual_params() (a swan_envs task has)")
    expert = make_expert(env)
    rows = []
    try:
        for i in range(args.episodes):
            obs, _ = env.reset(seed=args.seed + i)
            params = env.unwrapped.visual_params()
            info: dict[str, Any] = {}
            done = False
            while not done:
                expert(obs)  # tracks the phase the episode is in
                obs, _, terminated, truncated, info = env.step(policy.act(obs, args.budget))
                done = terminated or truncated
            success = bool(info.get("is_success"))
            rows.append(
                {
                    "seed": args.seed + i,
                    "success": success,
                    "end_phase": expert.phase,
                    "factors": {k: round(v, 4) for k, v in factors(params).items()},
                }
            )
    finally:
        env.close()
    # a factor the variation leaves alone (distractors under "appearance") has no thirds
    names = [
        n for n in (rows[0]["factors"] if rows else ()) if len({r["factors"][n] for r in rows}) > 1
    ]
    result = {
        "run": str(args.run),
        "variation": env_cfg.kwargs.get("variation", "none"),
        "episodes": len(rows),
        "success": float(np.mean([r["success"] for r in rows])) if rows else 0.0,
        "failure_end_phases": dict(Counter(r["end_phase"] for r in rows if not r["success"])),
        "thirds": {name: by_thirds(rows, name) for name in names},
        "rows": rows,
    }
    if args.out:  # first: a reader of the table that stops early (head) leaves the file
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(f"{result['episodes']} episodes, success {result['success']:.1%}")
    print(f"failures ended in phase: {result['failure_end_phases']}")
    for name, parts in result["thirds"].items():
        cells = ", ".join(
            f"{p['from']:g}-{p['to']:g}: {p['success']:.0%} of {p['episodes']}" for p in parts
        )
        print(f"{name:>18}  {cells}")


if __name__ == "__main__":
    main()

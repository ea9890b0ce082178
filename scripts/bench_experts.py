"""Measure the scripted experts: success, return, episode length and env steps/s per task.

Usage:
    python scripts/bench_experts.py --episodes 100 --out runs/bench_experts.json
    python scripts/bench_experts.py --episodes 50 --random-actions 0.2 --envs swan_envs/PickPlace-v0

Episode ``i`` of every row uses ``reset(seed=seed + i)``. Success is ``info["is_success"]`` on
the episode's last step. "env steps/s" times ``env.step`` alone (physics + 64x64 render, one
process); "loop steps/s" includes the expert and resets.

Rendering throughput against Reacher-v5 and demo-collection speed (1 vs 2 workers) are measured
by ``scripts/bench_envs.py``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table

import swan_envs
from swan_envs.experts import make_expert

PIXEL_IDS = ("swan_envs/PixelInvertedPendulum-v1", "swan_envs/PixelReacher-v1")


def bench(
    env_id: str,
    variation: str | None,
    episodes: int,
    seed: int,
    size: int,
    random_actions: float = 0.0,
) -> dict[str, Any]:
    """Run ``episodes`` expert episodes of ``env_id`` and return the measurements.

    ``random_actions``: probability that a step's action is replaced by a uniform random
    one -- how well the expert recovers from states off its own path (what DAgger asks it
    to label).
    """
    kwargs: dict[str, Any] = {"width": size, "height": size}
    if variation is not None:
        kwargs["variation"] = variation
    env = gym.make(env_id, **kwargs)
    expert = make_expert(env)
    rng = np.random.default_rng(seed)
    successes, returns, lengths = [], [], []
    step_seconds, steps = 0.0, 0
    start = time.perf_counter()
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        done, total, length = False, 0.0, 0
        while not done:
            action = expert(obs)
            if random_actions and rng.random() < random_actions:
                action = env.action_space.sample().astype(np.float32)
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(action)
            step_seconds += time.perf_counter() - t0
            total, length = total + float(reward), length + 1
            done = terminated or truncated
        successes.append(bool(info["is_success"]))
        returns.append(total)
        lengths.append(length)
        steps += length
    loop_seconds = time.perf_counter() - start
    env.close()
    return {
        "env_id": env_id,
        "variation": variation or "-",
        "episodes": episodes,
        "random_actions": random_actions,
        "success_rate": float(np.mean(successes)),
        "failed_seeds": [seed + i for i, ok in enumerate(successes) if not ok],
        "mean_return": float(np.mean(returns)),
        "mean_length": float(np.mean(lengths)),
        "env_steps_per_s": steps / step_seconds,
        "ms_per_env_step": 1000.0 * step_seconds / steps,
        "loop_steps_per_s": steps / loop_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image width = height")
    parser.add_argument("--envs", nargs="*", default=list(swan_envs.ENV_IDS))
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument(
        "--random-actions",
        type=float,
        default=0.0,
        help="replace each action by a random one with this probability (recovery test)",
    )
    args = parser.parse_args()

    rows = []
    for env_id in args.envs:
        variations: list[str | None] = [None] if env_id in PIXEL_IDS else ["none", "hard"]
        for variation in variations:
            rows.append(
                bench(env_id, variation, args.episodes, args.seed, args.size, args.random_actions)
            )

    noise = f", {args.random_actions:.0%} random actions" if args.random_actions else ""
    table = Table(
        title=f"Scripted experts, {args.episodes} episodes, {args.size}x{args.size} px{noise}"
    )
    for column in (
        "env",
        "variation",
        "success",
        "mean return",
        "mean length",
        "env steps/s",
        "ms/env step",
        "loop steps/s",
    ):
        table.add_column(column, justify="left" if column in ("env", "variation") else "right")
    for row in rows:
        table.add_row(
            row["env_id"],
            row["variation"],
            f"{100 * row['success_rate']:.0f}%",
            f"{row['mean_return']:.2f}",
            f"{row['mean_length']:.1f}",
            f"{row['env_steps_per_s']:.0f}",
            f"{row['ms_per_env_step']:.2f}",
            f"{row['loop_steps_per_s']:.0f}",
        )
    console = Console(width=150)
    console.print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "episodes": args.episodes,
            "seed": args.seed,
            "size": args.size,
            "random_actions": args.random_actions,
            "machine": platform.platform(),
            "processor": platform.processor(),
        }
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

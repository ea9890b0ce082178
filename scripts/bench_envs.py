"""Rendering throughput: env steps/s with 64x64 pixels on one core, vs gymnasium's Reacher-v5.

Usage:
    MUJOCO_GL=egl python scripts/bench_envs.py --out runs/bench_envs.json

Part 1, env steps/s. Every arm is a plain loop of uniform random actions with a reset when an
episode ends (the reset is timed too); one step = physics + one 64x64 render:

* the swan tasks (``Reach/Push/PickPlace-v0``, variation ``none`` and ``hard``) and the two
  pixel-wrapped ids render their observation inside ``step``;
* the reference, ``gym.make("Reacher-v5", render_mode="rgb_array", width=64, height=64)``, is
  stepped and then ``env.render()``-ed every step.

The process is pinned to one CPU (``os.sched_setaffinity``), BLAS/OpenMP threads to 1 and Mesa
llvmpipe's render threads to 0 (it rasterises in the calling thread; ``--lp-threads`` changes
it), the same for every arm; torch is not imported. The arms are interleaved because timings
on a shared machine drift: ``--rounds`` rounds, each timing ``--steps`` steps of every arm in a
rotated order; the tables give the median over rounds, and the ratio to Reacher-v5 is the
median of the per-round ratios (both arms of a ratio ran within the same round).

Part 2, demo collection (``swan_policy.data.demos.collect_demos``) with 1 and 2 workers on
each task (``--collect-episodes`` for Reach, Push, PickPlace; 0 skips it), in the same
interleaved way (``--collect-repeats``), with the CPU pinning lifted: wall seconds of the whole
call (worker start-up and file writing included) and env steps per wall second; the speed-up
is the median of ``wall(1 worker) / wall(2 workers)`` over repeats. CPU seconds (this process
plus its finished children) show what the workers cost beyond the episodes themselves. The
"ceiling" column runs the same env as a plain random-action loop in one process alone, then
in two independent processes at once (``--ceiling-steps``): what two cores of this machine
give right now, whatever collect_demos does. The load average is recorded with every
measurement: on a machine shared with other jobs, parallel speed-ups are capped by the cores
those jobs take.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Thread settings must be in place before numpy, mujoco or the GL driver load.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
if "--lp-threads" in sys.argv:
    os.environ["LP_NUM_THREADS"] = sys.argv[sys.argv.index("--lp-threads") + 1]
else:
    os.environ.setdefault("LP_NUM_THREADS", "0")
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"

# E402: these load BLAS / mujoco / GL, so they come after the thread settings above
import gymnasium as gym  # noqa: E402  (see above)
import numpy as np  # noqa: E402  (see above)
from rich.console import Console  # noqa: E402  (see above)
from rich.table import Table  # noqa: E402  (see above)

import swan_envs  # noqa: E402  (see above)

REFERENCE = "Reacher-v5"
PIXEL_IDS = ("swan_envs/PixelInvertedPendulum-v1", "swan_envs/PixelReacher-v1")


@dataclass
class Arm:
    """One env, stepped with random actions; ``rates`` holds steps/s per round."""

    name: str
    env_id: str
    variation: str
    env: gym.Env[Any, Any]
    step: Callable[[np.ndarray], bool]  # one step (+ render); True when the episode ended
    before_round: Callable[[], None] = lambda: None
    rates: list[float] = field(default_factory=list)


def make_arms(size: int, seed: int) -> list[Arm]:
    arms: list[Arm] = []
    for env_id in swan_envs.ENV_IDS:
        variations = ["-"] if env_id in PIXEL_IDS else ["none", "hard"]
        for variation in variations:
            kwargs: dict[str, Any] = {"width": size, "height": size}
            if variation != "-":
                kwargs["variation"] = variation
            env = gym.make(env_id, **kwargs)
            name = env_id.removeprefix("swan_envs/")
            arms.append(_arm(f"{name} ({variation})" if variation != "-" else name, env, False))
            arms[-1].env_id, arms[-1].variation = env_id, variation
    reference = gym.make(REFERENCE, render_mode="rgb_array", width=size, height=size)
    arm = _arm(REFERENCE, reference, True)
    arm.env_id = REFERENCE
    # gymnasium's offscreen viewer renders into whatever GL context is current; the swan envs
    # switch contexts on every render, so make Reacher's current again before its rounds.
    arm.before_round = lambda: _make_reacher_current(reference)
    arms.append(arm)
    for i, arm in enumerate(arms):
        arm.env.reset(seed=seed + i)
        arm.env.action_space.seed(seed + i)
    arm.before_round()
    frame = reference.render()
    assert frame is not None and frame.shape == (size, size, 3) and frame.std() > 0
    return arms


def _arm(name: str, env: gym.Env[Any, Any], render: bool) -> Arm:
    def step(action: np.ndarray) -> bool:
        _, _, terminated, truncated, _ = env.step(action)
        if render:
            env.render()
        if terminated or truncated:
            env.reset()
            return True
        return False

    return Arm(name=name, env_id="", variation="-", env=env, step=step)


def _make_reacher_current(env: gym.Env[Any, Any]) -> None:
    viewer = getattr(env.unwrapped, "mujoco_renderer", None)
    viewer = getattr(viewer, "viewer", None)
    if viewer is not None:
        viewer.make_context_current()


def time_round(arm: Arm, steps: int, rng: np.random.Generator) -> float:
    space = arm.env.action_space
    actions = rng.uniform(space.low, space.high, size=(steps, *space.shape)).astype(space.dtype)
    arm.before_round()
    start = time.perf_counter()
    for action in actions:
        arm.step(action)
    return steps / (time.perf_counter() - start)


def bench_envs(arms: list[Arm], rounds: int, steps: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    for arm in arms:  # warm-up: first renders, caches
        time_round(arm, min(steps, 50), rng)
    for r in range(rounds):
        for arm in arms[r % len(arms) :] + arms[: r % len(arms)]:
            arm.rates.append(time_round(arm, steps, rng))
    reference = next(arm for arm in arms if arm.env_id == REFERENCE)
    rows = []
    for arm in arms:
        ratios = [a / b for a, b in zip(arm.rates, reference.rates, strict=True)]
        median = statistics.median(arm.rates)
        rows.append(
            {
                "env": arm.name,
                "env_id": arm.env_id,
                "variation": arm.variation,
                "steps_per_s": median,
                "ms_per_step": 1000.0 / median,
                "min_steps_per_s": min(arm.rates),
                "max_steps_per_s": max(arm.rates),
                "ratio_to_reacher_v5": statistics.median(ratios),
                "rounds": arm.rates,
            }
        )
    return rows


def _loop_worker(env_id: str, steps: int, size: int) -> None:
    """``--loop`` mode: step ``env_id`` with random actions and print steps/s (one process)."""
    env = gym.make(env_id, width=size, height=size)
    env.reset(seed=0)
    space = env.action_space
    rng = np.random.default_rng(0)
    actions = rng.uniform(space.low, space.high, size=(steps, *space.shape)).astype(space.dtype)
    for action in actions[:50]:  # warm-up
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    print(steps / (time.perf_counter() - start))


def parallel_ceiling(env_id: str, steps: int, size: int, repeats: int) -> dict[str, Any]:
    """How much faster two independent processes step than one: the ceiling for 2 workers.

    Each process is a plain random-action loop (no expert, no pipes, no HDF5); the ratio is
    (sum of the two rates) / (rate of one alone), median over ``repeats``.
    """
    import subprocess

    command = [sys.executable, __file__, "--loop", env_id, str(steps), "--size", str(size)]

    def run(n: int) -> list[float]:
        processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return [float(p.communicate()[0].split()[-1]) for p in processes]

    ratios, ones, twos = [], [], []
    for _ in range(repeats):
        one, two = run(1)[0], sum(run(2))
        ones.append(one)
        twos.append(two)
        ratios.append(two / one)
    return {
        "env_id": env_id,
        "steps_per_s_1": statistics.median(ones),
        "steps_per_s_2": statistics.median(twos),
        "ceiling": statistics.median(ratios),
    }


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def bench_collection(
    episodes: dict[str, int], repeats: int, size: int, seed: int
) -> list[dict[str, Any]]:
    from swan_policy.data.demos import collect_demos

    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for env_id, n in episodes.items():
                for workers in (1, 2) if r % 2 == 0 else (2, 1):
                    load_before = os.getloadavg()[0]
                    cpu_before = _cpu_seconds()
                    start = time.perf_counter()
                    stats = collect_demos(
                        env_id,
                        n,
                        Path(tmp) / "demos.hdf5",
                        workers=workers,
                        seed=seed,
                        env_kwargs={"width": size, "height": size},
                        progress=False,
                        overwrite=True,
                    )
                    wall = time.perf_counter() - start
                    cpu_parent, cpu_workers = (
                        b - a for a, b in zip(cpu_before, _cpu_seconds(), strict=True)
                    )
                    runs.setdefault((env_id, workers), []).append(
                        {
                            "wall_s": wall,
                            "steps": stats.samples,
                            "steps_per_wall_s": stats.samples / wall,
                            "steps_per_s_after_startup": stats.steps_per_second,
                            "cpu_s_parent": cpu_parent,
                            "cpu_s_workers": cpu_workers,
                            "load_before": load_before,
                            "load_after": os.getloadavg()[0],
                        }
                    )
    rows = []
    for env_id, n in episodes.items():
        one, two = runs[(env_id, 1)], runs[(env_id, 2)]
        row: dict[str, Any] = {"env_id": env_id, "episodes": n, "steps": one[0]["steps"]}
        for workers, measured in ((1, one), (2, two)):
            row[f"wall_s_w{workers}"] = statistics.median(m["wall_s"] for m in measured)
            row[f"steps_per_s_w{workers}"] = statistics.median(
                m["steps_per_wall_s"] for m in measured
            )
            row[f"cpu_s_w{workers}"] = statistics.median(
                m["cpu_s_parent"] + m["cpu_s_workers"] for m in measured
            )
            row[f"runs_w{workers}"] = measured
        row["cpu_s_parent_w2"] = statistics.median(m["cpu_s_parent"] for m in two)
        row["speedup"] = statistics.median(
            a["wall_s"] / b["wall_s"] for a, b in zip(one, two, strict=True)
        )
        loads = [m[k] for m in one + two for k in ("load_before", "load_after")]
        row["load_min"], row["load_max"] = min(loads), max(loads)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image width = height")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=300, help="steps per arm per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    parser.add_argument("--lp-threads", default="0", help="LP_NUM_THREADS for Mesa llvmpipe")
    parser.add_argument(
        "--collect-episodes",
        type=int,
        nargs=3,
        default=[200, 100, 100],
        metavar=("REACH", "PUSH", "PICKPLACE"),
        help="episodes per collect_demos run (0 0 0 skips part 2)",
    )
    parser.add_argument("--collect-repeats", type=int, default=2)
    parser.add_argument("--skip-envs", action="store_true", help="only part 2")
    parser.add_argument(
        "--ceiling-steps",
        type=int,
        default=3000,
        help="steps per process for the 2-process scaling ceiling (0 skips it)",
    )
    parser.add_argument("--loop", nargs=2, metavar=("ENV", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_envs.json"))
    args = parser.parse_args()
    if args.loop:
        _loop_worker(args.loop[0], int(args.loop[1]), args.size)
        return
    console = Console(width=160)
    meta: dict[str, Any] = {
        "size": args.size,
        "rounds": args.rounds,
        "steps": args.steps,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "env": {k: os.environ.get(k) for k in ("MUJOCO_GL", "LP_NUM_THREADS", "OMP_NUM_THREADS")},
        "load_start": os.getloadavg(),
    }

    rows: list[dict[str, Any]] = []
    if not args.skip_envs:
        all_cpus = os.sched_getaffinity(0)
        cpu = args.cpu if args.cpu is not None else max(all_cpus)
        os.sched_setaffinity(0, {cpu})
        meta["pinned_cpu"] = cpu
        try:
            arms = make_arms(args.size, args.seed)
            rows = bench_envs(arms, args.rounds, args.steps, args.seed)
            for arm in arms:
                arm.env.close()
        finally:
            os.sched_setaffinity(0, all_cpus)
        meta["load_after_envs"] = os.getloadavg()
        table = Table(
            title=f"env steps/s, {args.size}x{args.size} px, one core, median of {args.rounds} "
            f"interleaved rounds of {args.steps} steps"
        )
        for column in ("env", "steps/s", "ms/step", "min-max steps/s", "x Reacher-v5"):
            table.add_column(column, justify="left" if column == "env" else "right")
        for row in rows:
            table.add_row(
                row["env"],
                f"{row['steps_per_s']:.0f}",
                f"{row['ms_per_step']:.2f}",
                f"{row['min_steps_per_s']:.0f}-{row['max_steps_per_s']:.0f}",
                f"{row['ratio_to_reacher_v5']:.2f}x",
            )
        console.print(table)

    collection: list[dict[str, Any]] = []
    if any(args.collect_episodes):
        episodes = dict(zip(swan_envs.TASK_IDS, args.collect_episodes, strict=True))
        episodes = {k: v for k, v in episodes.items() if v > 0}
        collection = bench_collection(episodes, args.collect_repeats, args.size, args.seed)
        if args.ceiling_steps > 0:
            for row in collection:
                row["ceiling"] = parallel_ceiling(
                    row["env_id"], args.ceiling_steps, args.size, args.collect_repeats
                )
        table = Table(
            title=f"collect_demos, 1 vs 2 workers ({os.cpu_count()} CPUs), median of "
            f"{args.collect_repeats} interleaved repeats; wall time includes start-up"
        )
        for column in (
            "env",
            "episodes",
            "steps",
            "wall s (1)",
            "wall s (2)",
            "steps/s (1)",
            "steps/s (2)",
            "speed-up",
            "ceiling",
            "CPU s (1)",
            "CPU s (2)",
            "of which parent",
            "load avg",
        ):
            table.add_column(column, justify="left" if column == "env" else "right")
        for row in collection:
            table.add_row(
                row["env_id"].removeprefix("swan_envs/"),
                str(row["episodes"]),
                str(row["steps"]),
                f"{row['wall_s_w1']:.2f}",
                f"{row['wall_s_w2']:.2f}",
                f"{row['steps_per_s_w1']:.0f}",
                f"{row['steps_per_s_w2']:.0f}",
                f"{row['speedup']:.2f}x",
                f"{row['ceiling']['ceiling']:.2f}x" if "ceiling" in row else "-",
                f"{row['cpu_s_w1']:.2f}",
                f"{row['cpu_s_w2']:.2f}",
                f"{row['cpu_s_parent_w2']:.2f}",
                f"{row['load_min']:.1f}-{row['load_max']:.1f}",
            )
        console.print(table)
    meta["load_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"meta": meta, "envs": rows, "collection": collection}, indent=2)
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

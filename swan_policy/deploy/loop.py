"""Fixed-rate control loop of a bundle against a simulator, in a torch-free process.

What a robot integrator runs before putting a bundle on hardware (``swan deploy``
starts it as ``python -m swan_policy.deploy.loop``)::

    python -m swan_policy.deploy.loop --bundle bundles/reach --task swan_envs/Reach-v0 \\
        --rate 50 --deadline-ms 5 --episodes 20 --json deploy.json

Importing torch is blocked in this process before anything else is imported, so the
loop proves that the runtime, the scheduler and the simulator need no torch. Each
control period: validate + schedule + infer (:class:`PolicyRuntime`), step the
simulator, then sleep until the next tick; a step that overruns its period is
counted and the clock re-synchronised (no burst of catch-up steps). Reports success,
latency percentiles per level, deadline misses, period overruns and the mean budget.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

TORCH_BLOCKED = "torch is not available in the deploy loop (the runtime must not need it)"


class _BlockTorch(importlib.abc.MetaPathFinder):
    """Makes ``import torch`` (and its submodules) fail in this process."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname == "torch" or fullname.startswith("torch."):
            raise ImportError(TORCH_BLOCKED)
        return None


def block_torch() -> None:
    """Refuse ``import torch`` from now on (raises if torch is already imported)."""
    if "torch" in sys.modules:
        raise RuntimeError("torch is already imported in this process")
    if not any(isinstance(f, _BlockTorch) for f in sys.meta_path):
        sys.meta_path.insert(0, _BlockTorch())


def run_control_loop(
    runtime: Any,
    env: Any,
    episodes: int,
    seed: int = 10_000,
    rate_hz: float | None = 50.0,
    on_episode: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Play ``episodes`` episodes at a fixed control rate; episode ``i`` uses seed+i.

    Args:
        runtime: a :class:`~swan_policy.deploy.runtime.PolicyRuntime`.
        env: a gymnasium env with the bundle's observation dict.
        episodes: how many episodes.
        seed: seed of the first episode.
        rate_hz: control rate (None or 0: as fast as possible, no sleeping).
        on_episode: called with each finished episode's record.

    Returns:
        Summary: success rate, returns, steps, period overruns, wall time and the
        runtime's :meth:`~swan_policy.deploy.runtime.PolicyRuntime.stats`.

    Raises:
        ValueError: ``rate_hz`` is negative, NaN or infinite.
    """
    import numpy as np

    if rate_hz is not None and not (math.isfinite(rate_hz) and rate_hz >= 0):
        raise ValueError(f"--rate: must be a finite number >= 0, got {rate_hz}")
    period = 1.0 / rate_hz if rate_hz else 0.0
    records: list[dict[str, Any]] = []
    overruns = 0
    runtime.reset_stats()
    start = time.perf_counter()
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        runtime.reset()
        ret, length, budgets, done = 0.0, 0, 0.0, False
        info: dict[str, Any] = {}
        tick = time.perf_counter()
        while not done:
            action = runtime.act(obs)
            budgets += runtime.last_level
            obs, reward, terminated, truncated, info = env.step(action)
            ret += float(reward)
            length += 1
            done = bool(terminated or truncated)
            if period:
                tick += period
                wait = tick - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                else:  # overran the period: count it and re-synchronise the clock
                    overruns += 1
                    tick = time.perf_counter()
        record = {
            "seed": seed + i,
            "success": bool(info.get("is_success", False)),
            "return": ret,
            "length": length,
            "mean_budget": budgets / max(length, 1),
        }
        records.append(record)
        if on_episode is not None:
            on_episode(record)
    wall = time.perf_counter() - start
    stats = runtime.stats()
    returns = np.array([r["return"] for r in records])
    return {
        "episodes": len(records),
        "success_rate": float(np.mean([r["success"] for r in records])),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "length_mean": float(np.mean([r["length"] for r in records])),
        "steps": stats["steps"],
        "mean_budget": stats["mean_budget"],
        "rate_hz": rate_hz,
        "period_overruns": overruns,
        "deadline_ms": stats["deadline_ms"],
        "deadline_misses": stats["deadline_misses"],
        "wall_s": wall,
        "latency": {"overall": stats["overall"], "levels": stats["levels"]},
        "scheduler": stats["scheduler"],
        "episode_records": records,
    }


def make_sim_env(task: str, env_kwargs: dict[str, Any] | None = None) -> Any:
    """``gym.make(task)`` (flat ``Box`` observations become ``{"proprio": ...}``)."""
    from swan_policy.config import EnvConfig
    from swan_policy.envs import make_env

    return make_env(EnvConfig(id=task, kwargs=env_kwargs or {}))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m swan_policy.deploy.loop",
        description="Run an exported bundle in a fixed-rate control loop against a simulator.",
    )
    ap.add_argument("--bundle", required=True, help="bundle directory from swan export")
    ap.add_argument("--task", required=True, help="gymnasium id, e.g. swan_envs/Reach-v0")
    ap.add_argument("--rate", type=float, default=50.0, help="control rate in Hz (0: free-run)")
    ap.add_argument("--deadline-ms", type=float, default=None, help="policy deadline per step")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=10_000, help="seed of episode 0")
    ap.add_argument("--scheduler", default=None, help="e.g. fixed:0.5, deadline:5, adaptive:0.5")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    ap.add_argument("--env-kwarg", action="append", default=[], help="gym.make kwarg k=v (JSON)")
    ap.add_argument("--json", default=None, help="write the summary here")
    ap.add_argument("--quiet", action="store_true", help="no per-episode lines")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one ``error:`` line and return 2."""
    block_torch()
    args = _parse(argv)
    from swan_policy.deploy.runtime import BundleError, PolicyRuntime
    from swan_policy.spec import ObservationError

    user_errors: tuple[type[BaseException], ...] = (
        BundleError,
        ObservationError,
        ValueError,
        FileNotFoundError,
    )
    try:
        if args.episodes < 1:
            raise ValueError(f"--episodes: must be >= 1, got {args.episodes}")
        if not (math.isfinite(args.rate) and args.rate >= 0):
            raise ValueError(f"--rate: must be a finite number >= 0, got {args.rate}")
        if args.deadline_ms is not None and not (
            math.isfinite(args.deadline_ms) and args.deadline_ms > 0
        ):
            raise ValueError(f"--deadline-ms: must be a finite number > 0, got {args.deadline_ms}")
        kwargs = {}
        for item in args.env_kwarg:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--env-kwarg: expected key=value, got {item!r}")
            try:
                kwargs[key] = json.loads(raw)
            except json.JSONDecodeError:
                kwargs[key] = raw
        scheduler = args.scheduler or (
            f"deadline:{args.deadline_ms:g}" if args.deadline_ms else None
        )
        runtime = PolicyRuntime.load(
            args.bundle, scheduler=scheduler, deadline_ms=args.deadline_ms,
            precision=args.precision,
        )  # fmt: skip
        try:
            env = make_sim_env(args.task, kwargs)
        except TypeError as e:  # an env constructor refusing a keyword it does not take
            if not kwargs:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"--env-kwarg: {args.task} refused the keyword arguments {kwargs}: {first}"
            ) from None
        try:
            from swan_policy.envs import check_spaces

            check_spaces(runtime, env)

            def show(r: dict[str, Any]) -> None:
                if not args.quiet:
                    print(
                        f"episode seed {r['seed']}: {'success' if r['success'] else 'failure'}, "
                        f"{r['length']} steps, mean budget {r['mean_budget']:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )

            summary = run_control_loop(
                runtime, env, args.episodes, args.seed, args.rate or None, show
            )
        finally:
            env.close()
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary.update(
        {
            "bundle": str(args.bundle),
            "task": args.task,
            "precision": args.precision,
            "torch_imported": "torch" in sys.modules,
        }
    )
    text = json.dumps(summary, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

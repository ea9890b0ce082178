"""Gated PPO vs SB3's default MlpPolicy PPO on state tasks (issue 5 targets).

Two parts, both on the configs' env stack (``make_rl_env``: VecMonitor, VecNormalize if the
config says so) and hyper-parameters (``rl.hyperparams``, ``rl.n_envs``):

1. **Returns** (``--seeds``): per env and seed, both arms train for the same timesteps with
   the same seed: the gated arm through ``swan train``'s code path (``train_rl``; its run
   directory is reused if it already finished), the dense arm as
   ``PPO("MlpPolicy", env, seed=s, **rl.hyperparams)``. Both are then evaluated
   deterministically on the same episodes (env seeds ``10000 + j``), in one process, with
   one loop; the gated arm as its extracted ``SwanPolicy`` (VecNormalize folded in), whose
   gate statistics give the active fraction of its hidden units. A uniform-random policy
   on the same episodes gives the floor for the normalised score
   ``(R - R_random) / (R_dense - R_random)`` (Reacher's returns are negative).
2. **Throughput** (``--rounds``): fresh models of each arm alternately learn one rollout
   (``n_steps * n_envs`` env steps) per round; env steps/s is the median over rounds and
   the ratio the median of per-round ratios (the machine is shared: interleaving keeps
   the arms under the same load). Arms: dense, gated (the config), and gated with a dense
   critic (``rl.critic_gated=false``).

Usage::

    MUJOCO_GL=egl nice -n 5 .venv/bin/python scripts/bench_rl.py \\
        --configs configs/inverted_pendulum_ppo.yaml configs/reacher_ppo.yaml \\
        --seeds 0 1 2 --episodes 20 --rounds 8 --out runs/bench_rl
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecMonitor,
    VecNormalize,
)

from swan_policy.config import ExperimentConfig, load_config
from swan_policy.envs import make_env
from swan_policy.policy import SwanPolicy
from swan_policy.spec import PROPRIO
from swan_policy.train.rl_run import build_model, make_rl_env, run_is_finished, train_rl

Act = Callable[[dict[str, np.ndarray]], np.ndarray]


def evaluate(cfg: ExperimentConfig, act: Act, episodes: int, seed: int) -> list[float]:
    """Returns of ``episodes`` episodes (env seeds ``seed + j``), one env, this process."""
    env = make_env(cfg.env)
    returns = []
    try:
        for j in range(episodes):
            obs, _ = env.reset(seed=seed + j)
            done, ret = False, 0.0
            while not done:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                ret += float(reward)
                done = terminated or truncated
            returns.append(ret)
    finally:
        env.close()
    return returns


def dense_env(cfg: ExperimentConfig) -> VecEnv:
    """The config's env stack for SB3's MlpPolicy: the env's own flat Box observations."""
    rl = cfg.rl
    fns = [partial(gym.make, cfg.env.id, **cfg.env.kwargs) for _ in range(rl.n_envs)]
    base: VecEnv = (
        SubprocVecEnv(fns, start_method="forkserver")  # type: ignore[arg-type]  # partial(gym.make)
        if rl.subproc and rl.n_envs > 1
        else DummyVecEnv(fns)  # type: ignore[arg-type]  # partial(gym.make) is untyped
    )
    env: VecEnv = VecMonitor(base)
    if rl.normalize:
        gamma = float(rl.hyperparams.get("gamma", 0.99))
        env = VecNormalize(env, norm_reward=rl.norm_reward, gamma=gamma)
    return env


def dense_act(model: BaseAlgorithm) -> Act:
    vn = model.get_vec_normalize_env()

    def act(obs: dict[str, np.ndarray]) -> np.ndarray:
        batch = obs[PROPRIO][None]
        if vn is not None:
            batch = vn.normalize_obs(batch)  # type: ignore[assignment]  # array in, array out
        return model.predict(batch, deterministic=True)[0][0]

    return act


def unit_weighted_active(policy: SwanPolicy) -> float:
    layers = policy.gate_stats()["layers"]
    units = sum(v["units"] for v in layers.values())
    if not units:  # an ungated policy: every unit computes
        return 1.0
    return sum(v["active_fraction"] * v["units"] for v in layers.values()) / units


def with_seed(cfg: ExperimentConfig, seed: int, timesteps: int | None) -> ExperimentConfig:
    rl = cfg.rl if timesteps is None else cfg.rl.model_copy(update={"total_timesteps": timesteps})
    return cfg.model_copy(update={"seed": seed, "rl": rl})


def returns_part(
    cfg: ExperimentConfig,
    seeds: list[int],
    episodes: int,
    out: Path,
    timesteps: int | None,
    gated_only: bool = False,
) -> dict[str, Any]:
    name = cfg.name
    rows = []
    rng = np.random.default_rng(0)
    probe = make_env(cfg.env)
    space = probe.action_space
    probe.close()
    random_returns = evaluate(
        cfg,
        lambda obs: rng.uniform(space.low, space.high).astype(np.float32),  # type: ignore[attr-defined]  # a Box
        episodes,
        10_000,
    )
    for seed in seeds:
        scfg = with_seed(cfg, seed, timesteps)
        run_dir = out / f"{name}-gated-seed{seed}"
        t0 = time.perf_counter()
        if not run_is_finished(run_dir, scfg.rl.total_timesteps):
            resume = (run_dir / "checkpoints" / "last").is_file()
            train_rl(scfg, run_dir, resume=resume, show=False)
        gated_s = time.perf_counter() - t0
        policy = SwanPolicy.from_pretrained(_last(run_dir)).eval()
        policy.reset_gate_stats()
        g_ret = evaluate(scfg, policy.act, episodes, 10_000)
        active = unit_weighted_active(policy)
        d_ret, dense_s = [float("nan")], float("nan")
        if not gated_only:
            t0 = time.perf_counter()
            env = dense_env(scfg)
            dense = PPO("MlpPolicy", env, seed=seed, verbose=0, **scfg.rl.hyperparams)
            dense.learn(scfg.rl.total_timesteps)
            dense_s = time.perf_counter() - t0
            d_ret = evaluate(scfg, dense_act(dense), episodes, 10_000)
            env.close()
        row = {
            "seed": seed,
            "gated_return": float(np.mean(g_ret)),
            "dense_return": float(np.mean(d_ret)),
            "gated_active_fraction": active,
            "gated_train_s": gated_s,
            "dense_train_s": dense_s,
        }
        print(json.dumps({"env": name, **row}), flush=True)
        rows.append(row)
    r_rand = float(np.mean(random_returns))
    g = float(np.mean([r["gated_return"] for r in rows]))
    d = float(np.mean([r["dense_return"] for r in rows]))
    return {
        "env": cfg.env.id,
        "timesteps": (timesteps or cfg.rl.total_timesteps),
        "episodes": episodes,
        "random_return": r_rand,
        "rows": rows,
        "gated_return": g,
        "dense_return": d,
        "ratio_raw": g / d if d else float("nan"),
        "ratio_normalised": (g - r_rand) / (d - r_rand),
        "gated_active_fraction": float(np.mean([r["gated_active_fraction"] for r in rows])),
    }


def _last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "last").read_text().strip()


def throughput_part(cfg: ExperimentConfig, rounds: int) -> dict[str, Any]:
    light = cfg.model_copy(update={"rl": cfg.rl.model_copy(update={"critic_gated": False})})
    builders: dict[str, Callable[[], BaseAlgorithm]] = {
        "dense": lambda: PPO("MlpPolicy", dense_env(cfg), seed=0, **cfg.rl.hyperparams),
        "gated": lambda: build_model(_resolved(cfg), make_rl_env(cfg)),
        "gated, dense critic": lambda: build_model(_resolved(light), make_rl_env(light)),
    }
    models = {k: b() for k, b in builders.items()}
    chunk = int(cfg.rl.hyperparams.get("n_steps", 2048)) * cfg.rl.n_envs
    times: dict[str, list[float]] = {k: [] for k in models}
    for m in models.values():
        m.learn(chunk)  # warm-up
    for r in range(rounds):
        order = list(models.items())
        order = order[r % len(order) :] + order[: r % len(order)]
        for k, m in order:
            t0 = time.perf_counter()
            m.learn(chunk, reset_num_timesteps=False)
            times[k].append(time.perf_counter() - t0)
    for m in models.values():
        m.get_env().close()  # type: ignore[union-attr]  # learn() ran: the env is set
    dense_t = np.array(times["dense"])
    return {
        k: {
            "steps_per_s": float(chunk / np.median(v)),
            "ratio_to_dense": float(np.median(dense_t / np.array(v))),
        }
        for k, v in times.items()
    }


def _resolved(cfg: ExperimentConfig) -> ExperimentConfig:
    from swan_policy.envs import resolve_policy_config

    env = make_env(cfg.env)
    try:
        return cfg.model_copy(update={"policy": resolve_policy_config(cfg.policy, env)})
    finally:
        env.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--timesteps", type=int, default=None, help="override rl.total_timesteps")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=8, help="throughput rounds (0: skip)")
    ap.add_argument("--set", action="append", default=[], help="config override (both configs)")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_rl"))
    ap.add_argument("--gated-only", action="store_true", help="skip the dense arm (tuning)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in args.configs:
        cfg = load_config(path, args.set)
        res: dict[str, Any] = {"config": path, "overrides": args.set, "name": cfg.name}
        if args.seeds:
            res["returns"] = returns_part(
                cfg, args.seeds, args.episodes, args.out, args.timesteps, args.gated_only
            )
        if args.rounds:
            res["throughput"] = throughput_part(cfg, args.rounds)
        results.append(res)
        print(json.dumps(res, indent=1), flush=True)
    (args.out / "bench_rl.json").write_text(json.dumps(results, indent=1))
    print("\n| env | dense return | gated return | ratio (normalised) | active | steps/s ratio |")
    print("|---|---|---|---|---|---|")
    for res in results:
        r, t = res.get("returns"), res.get("throughput", {})
        if r:
            print(
                f"| {r['env']} | {r['dense_return']:.1f} | {r['gated_return']:.1f} | "
                f"{r['ratio_raw']:.2f} ({r['ratio_normalised']:.2f}) | "
                f"{r['gated_active_fraction']:.2f} | "
                f"{t.get('gated', {}).get('ratio_to_dense', float('nan')):.2f} |"
            )


if __name__ == "__main__":
    main()

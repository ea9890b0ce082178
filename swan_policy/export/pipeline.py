"""``swan export`` end to end: calibrate the ladder, export, evaluate closed-loop.

1. **Calibration rollouts** of the trained policy at budget 1.0 in the run's env
   (seeds ``calib_seed + i``) give the observations the ladder is ranked on
   (:func:`swan_policy.budget.ladder.calibrate_ladder`) and the "real" observations
   of the parity check. The ladder is saved beside the run (``runs/<name>/ladder.json``)
   and copied into the bundle.
2. **Fine-tuning** (optional, ``finetune > 0``): each level, cut from the policy with its
   gates folded, is fine-tuned by BC on the run's demos (:mod:`swan_policy.train.finetune`).
3. **Export** of every level (:func:`swan_policy.export.onnx.export_bundle`), with the
   checker and parity asserted.
4. **Closed-loop evaluation** (optional, ``eval_episodes > 0``; required by ``int8``):
   each level runs in the simulator through the deploy runtime (onnxruntime, the same
   code as on the robot), episodes ``eval_seed + i``. An int8 graph is kept only if its
   success rate is within ``int8_tolerance`` (2 points) of its fp32 level's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from swan_policy.budget.ladder import LADDER_NAME, GateHandling, calibrate_ladder, level_policy
from swan_policy.config import ExperimentConfig
from swan_policy.export.onnx import BundleReport, LevelReport, export_bundle, set_int8_verdicts
from swan_policy.policy import SwanPolicy

INT8_TOLERANCE = 0.02
FinetuneData = Literal["demos", "run"]


def calibration_rollouts(
    policy: SwanPolicy, cfg: ExperimentConfig, episodes: int, seed: int, workers: int
) -> dict[str, np.ndarray]:
    """Observations seen by the policy (budget 1.0) over ``episodes`` rollouts."""
    from swan_policy.envs import check_spaces, make_env
    from swan_policy.evaluate import make_vec_env, run_episodes

    probe = make_env(cfg.env)
    try:
        check_spaces(policy, probe)
    finally:
        probe.close()
    vec = make_vec_env(cfg.env, min(workers, episodes))
    was_training = policy.training
    policy.eval()
    try:
        # the running envs' observations only, in episode order: the same whatever
        # the number of workers
        eps = run_episodes(policy, vec, episodes, seed, 1.0, collect=True)
    finally:
        vec.close()
        policy.train(was_training)
    eps.sort(key=lambda e: e.seed)
    return {
        k: np.concatenate([np.stack(e.obs[k]) for e in eps if e.obs is not None])
        for k in policy.obs_spec.entries
    }


def closed_loop(
    bundle: Path,
    cfg: ExperimentConfig,
    levels: Sequence[float],
    episodes: int,
    seed: int,
    precision: str = "fp32",
) -> dict[float, dict[str, Any]]:
    """Success and latency of each level run by the deploy runtime in the simulator.

    With ``precision="int8"`` it runs the int8 candidates that have no verdict yet:
    this is the closed-loop judgement that gives them one.
    """
    from swan_policy.deploy.loop import make_sim_env, run_control_loop
    from swan_policy.deploy.runtime import PolicyRuntime

    env = make_sim_env(str(cfg.env.id), dict(cfg.env.kwargs))
    out: dict[float, dict[str, Any]] = {}
    try:
        for b in levels:
            runtime = PolicyRuntime.load(
                bundle, scheduler=f"fixed:{b}", precision=precision, int8_unjudged=True
            )
            res = run_control_loop(runtime, env, episodes, seed, rate_hz=None)
            out[b] = {
                "success_rate": res["success_rate"],
                "return_mean": res["return_mean"],
                "p50_ms": res["latency"]["overall"].get("p50_ms"),
                "p99_ms": res["latency"]["overall"].get("p99_ms"),
            }
    finally:
        env.close()
    return out


def export_run(
    policy: SwanPolicy,
    cfg: ExperimentConfig,
    run: Path,
    out: Path,
    *,
    levels: Sequence[float],
    gates: GateHandling = "folded",
    gated: bool = False,
    int8: bool = False,
    calib_episodes: int = 20,
    calib_seed: int = 0,
    eval_episodes: int = 0,
    eval_seed: int = 10_000,
    workers: int = 2,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    on_level: Callable[[LevelReport], None] | None = None,
    finetune: float = 0.0,
    finetune_lr_scale: float = 0.3,
    finetune_data: FinetuneData = "run",
    show: bool = True,
) -> tuple[BundleReport, dict[str, Any]]:
    """Calibrate, (optionally) fine-tune each level, export and (optionally) evaluate;
    returns the report and a summary.

    With ``finetune > 0`` each level, cut from the policy and its gates folded, is
    fine-tuned by BC on the run's demos for that fraction of the run's training steps
    (:mod:`swan_policy.train.finetune`; runs under ``runs/<name>/finetune/``, reused
    when nothing changed), and the fine-tuned model is what the bundle ships. With
    ``finetune_data="run"`` (the default) it also trains on the run's DAgger rounds (the
    expert's labels on states the run's own policy visited; on one Push-v0 run level 0.25
    scored 82% with them against 46% on the demos alone, docs/results.md); ``"demos"``
    trains on the demo file alone.

    Raises:
        ValueError: ``int8`` without closed-loop episodes, or a bad level.
        ExportError: verification failed (nothing written).
    """
    if int8 and eval_episodes < 1:
        raise ValueError("--int8 needs --eval-episodes >= 1 (int8 is judged closed-loop)")
    if finetune < 0:
        raise ValueError(f"--finetune: must be >= 0, got {finetune:g}")
    if finetune > 0 and gates != "folded":
        raise ValueError("--finetune makes plain dense levels: it needs --gates folded")
    if finetune > 0 and cfg.method in ("ppo", "sac"):
        raise ValueError(
            f"--finetune trains on the run's demos by BC: it needs an imitation run, "
            f"not method {cfg.method!r}"
        )
    if finetune_data not in ("demos", "run"):
        raise ValueError(f"--finetune-data: expected 'demos' or 'run', got {finetune_data!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out: {out} exists (pass --overwrite to replace it)")
    log(f"calibration: {calib_episodes} rollouts of {cfg.env.id} at budget 1.0")
    obs = calibration_rollouts(policy, cfg, calib_episodes, calib_seed, workers)
    n = int(next(iter(obs.values())).shape[0])
    ladder = calibrate_ladder(
        policy,
        obs,
        levels,
        source=f"{calib_episodes} rollouts of {cfg.env.id} (seeds {calib_seed}+), {n} steps",
    )
    ladder.save(run / LADDER_NAME)
    log(f"ladder: {n} observations, saved to {run / LADDER_NAME}")
    tuned: dict[float, tuple[SwanPolicy, dict[str, Any]]] = {}
    if finetune > 0:
        from swan_policy.train.finetune import dagger_rounds, finetune_config
        from swan_policy.train.finetune import finetune as finetune_level

        fcfg = finetune_config(cfg, finetune, finetune_lr_scale)
        extra = dagger_rounds(run) if finetune_data == "run" else []
        data = str(fcfg.demos.path) + (f" + {len(extra)} DAgger rounds" if extra else "")
        for b in sorted(ladder.levels, reverse=True):
            log(f"fine-tune level {b:g}: {fcfg.bc.steps} BC steps on {data}")
            level = level_policy(policy, ladder, b, "folded")
            tuned[b] = finetune_level(
                level, fcfg, run / "finetune" / f"level_{b:g}", show, extra_data=extra
            )
    report = export_bundle(
        policy,
        ladder,
        out,
        gates=gates,
        real_obs=obs,
        config=cfg.model_dump(mode="json"),
        gated=gated,
        int8=int8,
        overwrite=overwrite,
        on_level=on_level,
        finetuned=tuned,
    )
    summary: dict[str, Any] = {
        "calibration_steps": n,
        "finetuned": {f"{b:g}": info for b, (_, info) in tuned.items()} or None,
        "closed_loop": None,
        "int8": None,
    }
    if eval_episodes > 0:
        log(f"closed loop: {eval_episodes} episodes per level (onnxruntime, seeds {eval_seed}+)")
        fp32 = closed_loop(out, cfg, ladder.levels, eval_episodes, eval_seed)
        summary["closed_loop"] = {f"{b:g}": v for b, v in fp32.items()}
        if int8:
            q = closed_loop(out, cfg, ladder.levels, eval_episodes, eval_seed, "int8")
            verdicts = {
                b: {
                    "kept": q[b]["success_rate"] >= fp32[b]["success_rate"] - INT8_TOLERANCE,
                    "success_rate": q[b]["success_rate"],
                    "fp32_success_rate": fp32[b]["success_rate"],
                    "p50_ms": q[b]["p50_ms"],
                    "episodes": eval_episodes,
                }
                for b in ladder.levels
            }
            set_int8_verdicts(out, verdicts)
            summary["int8"] = {f"{b:g}": v for b, v in verdicts.items()}
    return report, summary

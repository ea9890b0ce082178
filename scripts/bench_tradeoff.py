"""SWAN against static baselines at equal compute: success rate vs MACs per step.

For each seed, on one task (and visual variation), with the same demos, the same
training pipeline and steps (samples seen), and the same evaluation episodes:

* ``swan``: the gated policy of the task's config (sandwich rule). Rows: ``dynamic``
  (free gates capped at budget b, input-dependent), ``ladder`` (level b's compact dense
  model, units ranked on calibration rollouts; DESIGN.md §4) and ``adaptive`` (the
  token-bucket scheduler at ``--adaptive`` mean budget).
* ``dense``: the same architecture without gates (no sandwich): full width.
* ``scratch``: dense policies trained from scratch with the per-layer widths of each
  SWAN ladder level (so the same MACs).
* ``pruned``: the dense policy, L1-norm structured pruning to the same widths, then
  fine-tuned by BC for ``--finetune-frac`` of the training steps (extra samples,
  reported). ``pruned-noft`` is the pruned model before fine-tuning.
* ``slimmable``: one model, width prefixes, sandwich rule, gates that ignore the input
  (``swan_policy.baselines.make_slimmable``), evaluated at the width prefix whose MACs are
  nearest each level's (``matched_prefix_budget``; the row records ``prefix_budget``).
* ``ladder-ft``: SWAN's ladder levels fine-tuned exactly like ``pruned`` (row
  ``swan-ladder-ft``): SWAN's unit ranking and weights as the starting point instead of L1.

Writes ``<docs>/tradeoff_<task>[_<variation>].{json,md,png}`` (mean ± std over seeds) and
checks the issue's targets. Runs go to ``<out>/<task>/seed<k>/<arm>``; finished arms are
reused (``--fresh`` retrains; ``--resume`` continues interrupted ones from their last
checkpoint); ``--arms ... --merge`` re-runs only those arms and keeps the other rows of
the earlier JSON. ``--reuse-swan`` takes a finished ``swan train`` run of the
same config per seed (``{seed}`` in the path) instead of training the SWAN arm again.
``--arms dense`` alone needs no SWAN run, so it can train in a second process beside the
SWAN arm. Every other arm is matched to SWAN's ladder: start it once the SWAN arm has
finished (a process that needs a run another one is training stops with an error).
``--combine A.json B.json ...`` trains and evaluates nothing: it aggregates the per-seed
rows of earlier runs of this script (one seed per process, say) into one table. The
tables, plot and checks are written by ``scripts/tradeoff_report.py``.

    python scripts/bench_tradeoff.py --task swan_envs/Reach-v0 --seeds 0 1 2 --episodes 50 \\
        --reuse-swan 'runs/bench_imitation/reach_bc-seed{seed}'
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from tradeoff_report import (
    check_merge,
    combined,
    make_result,
    merge_earlier,
    task_slug,
    write_result,
)

from swan_envs import VARIATIONS
from swan_policy.baselines import (
    dense_config,
    l1_prune,
    make_slimmable,
    matched_prefix_budget,
    prefix_macs,
)
from swan_policy.budget.ladder import Ladder, calibrate_ladder, level_policy
from swan_policy.config import ExperimentConfig, load_config
from swan_policy.envs import make_env, resolve_policy_config
from swan_policy.evaluate import BudgetResult, evaluate_policy
from swan_policy.export.pipeline import calibration_rollouts
from swan_policy.policy import SwanPolicy
from swan_policy.train.checkpoint import latest_checkpoint, minutes_so_far, start_segment
from swan_policy.train.dagger import total_steps
from swan_policy.train.finetune import PLAIN, finetune_config
from swan_policy.train.imitation import train

REPO = Path(__file__).resolve().parents[1]
TASK_CONFIGS = {
    "swan_envs/Reach-v0": "configs/reach_bc.yaml",
    "swan_envs/Push-v0": "configs/push_bc.yaml",
    "swan_envs/PickPlace-v0": "configs/pickplace_bc.yaml",
}
ARMS = ("swan", "dense", "scratch", "pruned", "slimmable", "ladder-ft")
DONE = "bench_done.json"


def config_for(args: argparse.Namespace, seed: int, *extra: str) -> ExperimentConfig:
    """The task's config for ``seed``, with the bench's, the user's and ``extra`` overrides."""
    overrides = [f"env.id={args.task}", f"seed={seed}", "eval.at_end=false", "eval.every=0"]
    if args.variation != "none":
        slug = task_slug(args.task, args.variation)
        overrides += [
            f"env.kwargs.variation={args.variation}",
            f"demos.path=data/{slug}_demos.hdf5",
        ]
    return load_config(
        args.config or REPO / TASK_CONFIGS[args.task], [*overrides, *args.overrides, *extra]
    )


@contextmanager
def training_lock(run: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<run>.lock`` while ``run`` is checked and trained.

    Arms run in parallel processes share runs (the SWAN arm's, the dense one's). Without
    the lock, a process finding a run unfinished would delete it while another trains it;
    with it, that process stops with an error. The OS drops the lock if its holder dies.
    """
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f"{run.name}.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(
                f"error: {run} is being trained by another process; run this once it is done"
            ) from None
        yield


def trained(
    run: Path,
    cfg: ExperimentConfig,
    init: SwanPolicy | None,
    args: argparse.Namespace,
    console: Console,
) -> tuple[SwanPolicy, dict[str, Any]]:
    """Train ``cfg`` into ``run`` (unless a finished run is there); the final policy.

    ``--fresh`` trains again; with ``--resume`` an unfinished run (interrupted: no
    ``bench_done.json``, a checkpoint) continues from its last checkpoint, and its minutes
    add up over the segments.
    """
    done = run / DONE
    with training_lock(run):  # checked under the lock: another process may finish it first
        if args.fresh or not done.exists():
            resume = args.resume and not args.fresh and latest_checkpoint(run) is not None
            before = minutes_so_far(run) if resume else 0.0
            if run.exists() and not resume:
                shutil.rmtree(run)
            t0 = time.perf_counter()
            start_segment(run, before)
            verb = f"resume after {before:.1f} min" if resume else "train"
            console.print(f"[bold]{verb}[/] {run}")
            train(cfg, run, resume=resume, show=not args.quiet, init_policy=init)
            info = {
                "samples": total_steps(cfg) * cfg.bc.batch_size,
                "minutes": before + (time.perf_counter() - t0) / 60,
            }
            if resume:
                info["resumed"] = True
            done.write_text(json.dumps(info))
    last = latest_checkpoint(run)
    if last is None:
        raise SystemExit(f"error: {run} has no checkpoint")
    return SwanPolicy.from_pretrained(last), json.loads(done.read_text())


def reused_samples(run: Path, cfg: ExperimentConfig) -> int:
    """Samples a reused SWAN run trained on (its ``config.yaml``: steps x batch).

    The baselines train on ``cfg``'s samples; a run trained on other ones is refused (a
    run without ``config.yaml`` is taken to be ``cfg``'s).
    """
    samples = total_steps(cfg) * cfg.bc.batch_size
    saved = run / "config.yaml"
    if not saved.is_file():
        return samples
    own = load_config(saved)
    got = total_steps(own) * own.bc.batch_size
    if got != samples:
        raise SystemExit(
            f"error: --reuse-swan: {run} trained on {got:,} samples, the baselines would on "
            f"{samples:,}; pass the run's settings with --set"
        )
    return got


def evaluate(
    policy: SwanPolicy,
    cfg: ExperimentConfig,
    args: argparse.Namespace,
    budgets: Sequence[float] = (1.0,),
    schedulers: Sequence[Any] = (),
) -> list[BudgetResult]:
    return evaluate_policy(
        policy, cfg.env, args.episodes, budgets, args.workers, args.eval_seed, schedulers=schedulers
    )


def ladder_of(
    policy: SwanPolicy,
    cfg: ExperimentConfig,
    args: argparse.Namespace,
    levels: Sequence[float] | None = None,
) -> Ladder:
    """The policy's ladder over ``levels`` (default: 1 and ``--levels``), calibrated on
    ``--calib-episodes`` rollouts."""
    obs = calibration_rollouts(policy, cfg, args.calib_episodes, 0, args.workers)
    return calibrate_ladder(policy, obs, [1.0, *args.levels] if levels is None else levels)


def row(arm: str, level: float | None, r: BudgetResult, **extra: Any) -> dict[str, Any]:
    return {
        "arm": arm,
        "level": level,
        "success": r.success_rate,
        "return": r.return_mean,
        "macs": r.macs_per_step,
        "mean_budget": r.mean_budget,
        **extra,
    }


def run_seed(seed: int, args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    cfg = config_for(args, seed)
    root = args.out / task_slug(args.task, args.variation) / f"seed{seed}"
    rows: list[dict[str, Any]] = []
    arms = set(args.arms)

    env = make_env(cfg.env)
    try:
        resolved = resolve_policy_config(cfg.policy, env)
    finally:
        env.close()
    dense_full = prefix_macs(resolved, 1.0)  # the architecture's; no RNG draw
    targets: dict[float, float] = {}

    # --- SWAN -----------------------------------------------------------------------------
    # every arm but the full-width dense one is matched to (or is) SWAN's ladder, so only
    # ``--arms dense`` runs without it: it can train beside the SWAN arm, in another process
    if arms - {"dense"}:
        if args.reuse_swan:
            swan_run = Path(args.reuse_swan.format(seed=seed))
            last = latest_checkpoint(swan_run)
            if last is None:
                raise SystemExit(f"error: --reuse-swan: {swan_run} has no checkpoint")
            swan = SwanPolicy.from_pretrained(last)
            swan_info: dict[str, Any] = {
                "samples": reused_samples(swan_run, cfg),
                "reused": str(swan_run),
            }
        else:
            swan, swan_info = trained(root / "swan", cfg, None, args, console)
        if swan.dense_macs() != dense_full:  # every baseline is built from the config
            raise SystemExit(
                f"error: the SWAN run's architecture ({swan.dense_macs():,} dense MACs) is not "
                f"the config's ({dense_full:,}); pass the run's settings with --set"
            )
        ladder = ladder_of(swan, cfg, args)
        levels_rows = []
        # without the swan arm only the levels' MACs are needed: a gate-free level's are fixed
        level_args = args if "swan" in arms else argparse.Namespace(**{**vars(args), "episodes": 1})
        for b in args.levels:
            level = level_policy(swan, ladder, b, "folded")
            r = evaluate(level, cfg, level_args)[0]
            targets[b] = r.macs_per_step
            levels_rows.append(row("swan-ladder", b, r, samples=swan_info["samples"]))
        if "swan" in arms:
            adaptive = [f"adaptive:{t:g}" for t in args.adaptive]
            res = evaluate(swan, cfg, args, [1.0, *args.levels], adaptive)
            for r in res:
                if r.scheduler is None:
                    rows.append(row("swan-dynamic", r.budget, r, samples=swan_info["samples"]))
                else:
                    rows.append(
                        row("swan-adaptive", r.scheduler["target"], r, samples=swan_info["samples"])
                    )
            rows += levels_rows
        console.print(f"seed {seed}: SWAN done; ladder level MACs {targets}")

    # --- dense full width, its pruned versions ---------------------------------------------
    # the static baselines: no gates, one budget per step
    plain = PLAIN
    fcfg = finetune_config(cfg, args.finetune_frac, args.finetune_lr_scale)

    def finetuned(arm: str, b: float, init: SwanPolicy, run: str, samples_before: int) -> None:
        """Fine-tune a cut-down model (``fcfg``) and add its row."""
        tuned, tinfo = trained(root / run, fcfg, init, args, console)
        r = evaluate(tuned, fcfg, args)[0]
        samples = samples_before + tinfo["samples"]
        rows.append(row(arm, b, r, target_macs=targets[b], samples=samples))

    if arms & {"dense", "pruned"}:
        dcfg = config_for(args, seed, *plain)
        dense, dinfo = trained(root / "dense", dcfg, None, args, console)
        if "dense" in arms:
            rows.append(row("dense", 1.0, evaluate(dense, dcfg, args)[0], samples=dinfo["samples"]))
        if "pruned" in arms:
            for b in args.levels:
                pruned = l1_prune(dense, ladder.units(b))
                r = evaluate(pruned, dcfg, args)[0]
                rows.append(row("pruned-noft", b, r, target_macs=targets[b], samples=0))
                finetuned("pruned", b, pruned, f"pruned_{b:g}", dinfo["samples"])

    # --- SWAN's ladder levels, fine-tuned like the pruned models ---------------------------
    if "ladder-ft" in arms:
        for b in args.levels:
            level = level_policy(swan, ladder, b, "folded")
            finetuned("swan-ladder-ft", b, level, f"ladder_ft_{b:g}", swan_info["samples"])

    # --- dense from scratch at each level's widths -----------------------------------------
    if "scratch" in arms:
        for b in args.levels:
            with torch.random.fork_rng(devices=[]):  # the init is the seed's alone
                torch.manual_seed(seed)
                small = SwanPolicy(dense_config(resolved, ladder.units(b)))
            scfg = config_for(args, seed, *plain)
            policy, sinfo = trained(root / f"scratch_{b:g}", scfg, small, args, console)
            r = evaluate(policy, scfg, args)[0]
            rows.append(row("scratch", b, r, target_macs=targets[b], samples=sinfo["samples"]))

    # --- slimmable: width prefixes, same sandwich ------------------------------------------
    if "slimmable" in arms:
        torch.manual_seed(seed)
        slim_init = make_slimmable(SwanPolicy(resolved))
        slim, linfo = trained(root / "slimmable", cfg, slim_init, args, console)
        # each level's prefix is the one whose MACs are nearest the SWAN level's: a level
        # also drops never-active units, so ceil(b * N) units can be well over its MACs
        lo = cfg.bc.b_min if cfg.bc.sandwich else 0.0
        widths = {b: matched_prefix_budget(resolved, targets[b], lo) for b in args.levels}
        prefix = ladder_of(slim, cfg, args, sorted({1.0, *widths.values()}, reverse=True))
        for b in [1.0, *args.levels]:
            pb = widths.get(b, 1.0)
            r = evaluate(level_policy(slim, prefix, pb, "folded"), cfg, args)[0]
            rows.append(
                row(
                    "slimmable",
                    b,
                    r,
                    target_macs=targets.get(b, dense_full),
                    prefix_budget=pb,
                    samples=linfo["samples"],
                )
            )
    for rec in rows:
        rec["dense_macs"] = dense_full
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASK_CONFIGS), default="swan_envs/Reach-v0")
    parser.add_argument("--variation", choices=VARIATIONS, default="none")
    parser.add_argument("--config", type=Path, help="Default: the task's configs/*_bc.yaml.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=50, help="Evaluation episodes per row.")
    parser.add_argument("--eval-seed", type=int, default=10_000)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    parser.add_argument("--adaptive", type=float, nargs="*", default=[0.4])
    parser.add_argument("--calib-episodes", type=int, default=20)
    parser.add_argument("--finetune-frac", type=float, default=0.25)
    parser.add_argument("--finetune-lr-scale", type=float, default=0.3)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--reuse-swan", help="A finished SWAN run per seed, '{seed}' in it.")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_tradeoff"))
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "tradeoff")
    parser.add_argument("--fresh", action="store_true", help="Retrain finished arms.")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Continue interrupted arms from their last checkpoint (default: start again).",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="Replace only these --arms' rows in an earlier run's JSON (same seeds).",
    )
    parser.add_argument("--quiet", action="store_true", help="No training progress bars.")
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="Train and evaluate nothing: aggregate these earlier outputs' per-seed rows "
        "(same task, variation, episodes and levels; distinct seeds).",
    )
    args = parser.parse_args(argv)
    if sorted(set(args.levels)) != sorted(args.levels) or not all(0 < b < 1 for b in args.levels):
        parser.error("--levels: distinct budgets in (0, 1)")
    console = Console()
    command = "python scripts/bench_tradeoff.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.combine:
        return write_result(combined(args.combine, command, console), args.docs, console)
    t0 = time.perf_counter()
    slug = task_slug(args.task, args.variation)
    out_json = args.docs / f"tradeoff_{slug}.json"
    merge = args.merge and out_json.exists()
    settings = {"episodes": args.episodes, "eval_seed": args.eval_seed, "levels": args.levels}
    if merge:  # before any training: the earlier rows must be comparable with the new ones
        check_merge(out_json, args.seeds, settings)
    per_seed = [run_seed(s, args, console) for s in args.seeds]
    commands = [command]
    minutes_before = 0.0  # "minutes": every command's wall time, summed
    if merge:  # keep the other arms' rows of the earlier run
        per_seed, commands, minutes_before = merge_earlier(
            out_json, args.seeds, per_seed, command, settings
        )
    result = make_result(
        {
            "task": args.task,
            "variation": args.variation,
            "seeds": args.seeds,
            "episodes": args.episodes,
            "eval_seed": args.eval_seed,
            "levels": args.levels,
            "command": commands[0],
            "commands": commands,
            "minutes": minutes_before + (time.perf_counter() - t0) / 60,
        },
        per_seed,
    )
    return write_result(result, args.docs, console)


if __name__ == "__main__":
    main()

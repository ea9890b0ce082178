"""How should a budget ladder rank units? Closed-loop success of the level models per ranking.

A ladder level is a static cut: it keeps the same units for every input, where the gated
policy at the same budget picks its top-k per input. Which units to keep is the ladder's
ranking (``swan_policy/budget/ladder.py``). This script builds one ladder per ranking on
the same calibration rollouts and plays the same evaluation episodes with each level
model (torch, masked mode), beside the gated policy at the level's budget:

* ``free``: activation frequency at budget 1, ties by mean gate logit (the default);
* ``caps``: frequency averaged over the budget caps 1 / 0.75 / 0.5 / 0.25;
* ``low``: frequency at the ladder's lowest level (how often the network's own top-k
  keeps a unit there), ties by mean logit;
* ``own``: each level ranked by the frequency at its own budget. Levels then need not
  nest (a unit kept at 0.25 may be dropped at 0.5), which one shared ranking guarantees.

With ``--finetune FRAC`` each folded level is also fine-tuned as ``swan export --finetune
FRAC --finetune-data demos`` does (BC on the run's demo file alone; runs under ``--work``)
and played again (rows with ``"finetuned": true``): does the ranking still matter after a
fine-tune?

    MUJOCO_GL=egl OMP_NUM_THREADS=1 python scripts/ladder_ranking.py --run runs/demo \
        --levels 0.5 0.25 --episodes 50 --out runs/ladder_ranking.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from swan_policy.budget.ladder import Ladder, calibrate_ladder, level_policy, quiet
from swan_policy.cli import load_run_policy
from swan_policy.config import load_config
from swan_policy.evaluate import evaluate_policy
from swan_policy.export.pipeline import calibration_rollouts
from swan_policy.train.finetune import finetune, finetune_config

RANKINGS = ("free", "caps", "low", "own")


def ladders_for(
    policy: Any, obs: dict[str, Any], ranking: str, levels: list[float]
) -> dict[float, Ladder]:
    """The ladder each level is cut from, under ``ranking``."""
    ladder_levels = sorted({1.0, *levels}, reverse=True)
    if ranking == "own":
        return {b: calibrate_ladder(policy, obs, ladder_levels, rank_budgets=[b]) for b in levels}
    budgets = {"free": [1.0], "caps": [1.0, 0.75, 0.5, 0.25], "low": [min(levels)]}[ranking]
    one = calibrate_ladder(policy, obs, ladder_levels, rank_budgets=budgets)
    return dict.fromkeys(levels, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--rankings", nargs="+", choices=RANKINGS, default=list(RANKINGS))
    parser.add_argument("--gates", nargs="+", choices=("folded", "kept"), default=["folded"])
    parser.add_argument("--calib-episodes", type=int, default=20)
    parser.add_argument("--calib-seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--finetune", type=float, default=0.0, help="Fraction of the run's steps.")
    parser.add_argument("--finetune-lr-scale", type=float, default=0.3)
    parser.add_argument(
        "--work", type=Path, default=None, help="Fine-tune runs (default: <run>/ranking_finetune)."
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows.")
    args = parser.parse_args()

    policy = load_run_policy(args.run, args.checkpoint).eval()
    cfg = load_config(args.run / "config.yaml")
    t0 = time.perf_counter()
    obs = calibration_rollouts(policy, cfg, args.calib_episodes, args.calib_seed, args.workers)
    n_obs = len(next(iter(obs.values())))
    print(f"calibration: {args.calib_episodes} rollouts, {n_obs} observations", flush=True)

    def play(p: Any, budget: float) -> dict[str, Any]:
        (res,) = evaluate_policy(p, cfg.env, args.episodes, [budget], args.workers, args.seed)
        return {
            "success_rate": res.success_rate,
            "return_mean": res.return_mean,
            "macs_per_step": res.macs_per_step,
        }

    rows: list[dict[str, Any]] = []
    work = args.work or args.run / "ranking_finetune"
    if args.finetune > 0:
        fcfg = finetune_config(cfg, args.finetune, args.finetune_lr_scale)

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        print(
            f"level {row['level']:<5g} {row['ranking']:>6s} {row['gates']:>6s}"
            f"{' +ft' if row.get('finetuned') else '    '}  "
            f"success {100 * row['success_rate']:5.1f}%  "
            f"MMACs/step {row['macs_per_step'] / 1e6:6.3f}",
            flush=True,
        )

    for b in args.levels:
        report({"level": b, "ranking": "gated", "gates": "-", **play(policy, b)})
    for ranking in args.rankings:
        ladders = ladders_for(policy, obs, ranking, args.levels)
        for b in args.levels:
            for gates in args.gates:
                level = level_policy(policy, ladders[b], b, gates=gates)
                level.track_stats = True  # MACs per step in the row
                row = {"level": b, "ranking": ranking, "gates": gates}
                row["rank_budgets"] = list(ladders[b].rank_budgets)
                row["units"] = ladders[b].units(b)
                report({**row, **play(level, 1.0)})
                if args.finetune > 0 and gates == "folded":
                    run_dir = work / f"{ranking}_level_{b:g}"
                    tuned, info = finetune(level, fcfg, run_dir, show=False)
                    quiet(tuned).track_stats = True
                    report({**row, "finetuned": True, **info, **play(tuned, 1.0)})
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "run": str(args.run),
            "checkpoint": args.checkpoint,
            "calib_episodes": args.calib_episodes,
            "calib_observations": n_obs,
            "episodes": args.episodes,
            "seed": args.seed,
            "minutes": (time.perf_counter() - t0) / 60,
            "rows": rows,
        }
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

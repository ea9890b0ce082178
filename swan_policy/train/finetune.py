"""BC fine-tuning of a cut-down dense model: a ladder level, a pruned policy.

A ladder level (:func:`swan_policy.budget.ladder.level_policy`) keeps the units the gated
policy used most and computes them always; the units it drops were on for some inputs,
so the level loses accuracy that a short fine-tune on the demos wins back (the Reach
trade-off in docs/results.md: level 0.25 at 66% as cut, 90% fine-tuned). The same
recipe fine-tunes the static-pruning baseline in ``scripts/bench_tradeoff.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swan_policy.config import ExperimentConfig, apply_overrides, validate_config
from swan_policy.policy import SwanPolicy
from swan_policy.train.checkpoint import latest_checkpoint

# The recipe of a static (ungated) model: no sandwich, no gates, no sparsity term.
PLAIN = ("bc.sandwich=false", "policy.gate.sparsity_weight=0", "policy.gate.enabled=false")
DONE = "finetune.json"


def finetune_config(
    cfg: ExperimentConfig, frac: float = 0.25, lr_scale: float = 0.3
) -> ExperimentConfig:
    """``cfg`` turned into BC on its demos (no DAgger, no in-training evaluation) for
    ``frac`` of its training steps at ``lr_scale`` times its learning rate."""
    from swan_policy.train.dagger import total_steps

    if not 0 < frac:
        raise ValueError(f"frac: must be > 0, got {frac!r}")
    if not 0 < lr_scale:
        raise ValueError(f"lr_scale: must be > 0, got {lr_scale!r}")
    steps = max(1, round(frac * total_steps(cfg)))
    overrides = [
        *PLAIN,
        "method=bc",
        "eval.every=0",
        "eval.at_end=false",
        f"bc.steps={steps}",
        f"bc.warmup_steps={min(cfg.bc.warmup_steps, steps // 10)}",
        f"bc.lr={cfg.bc.lr * lr_scale}",
    ]
    out: ExperimentConfig = validate_config(apply_overrides(cfg.model_dump(mode="json"), overrides))
    return out


def finetune(
    model: SwanPolicy,
    cfg: ExperimentConfig,
    run_dir: Path,
    show: bool = True,
    extra_data: Sequence[Path] = (),
) -> tuple[SwanPolicy, dict[str, Any]]:
    """Fine-tune ``model`` with ``cfg`` (see :func:`finetune_config`) into ``run_dir``.

    ``extra_data``: labelled sample files trained on beside the demos (e.g. the source
    run's DAgger rounds, :func:`dagger_rounds`).

    A finished fine-tune already in ``run_dir`` with the same config, the same
    starting weights and the same extra data is reused; anything else there is replaced.

    Returns:
        The fine-tuned model (eval mode) and ``{"steps", "samples", "config_hash",
        "init_hash", "run"}``, plus ``"extra_data"`` and ``"extra_hash"`` with extra data.
    """
    from swan_policy.deploy.manifest import sha256_file
    from swan_policy.export.onnx import config_hash
    from swan_policy.serialization import tensors_hash
    from swan_policy.train.dagger import total_steps
    from swan_policy.train.imitation import train

    info = {
        "steps": total_steps(cfg),
        "samples": total_steps(cfg) * cfg.bc.batch_size,
        "config_hash": config_hash(cfg.model_dump(mode="json")),
        "init_hash": tensors_hash(model.state_dict()),
        "run": str(run_dir),
    }
    if extra_data:
        info["extra_data"] = [str(p) for p in extra_data]
        info["extra_hash"] = [sha256_file(p) for p in extra_data]
    done = run_dir / DONE
    last = latest_checkpoint(run_dir) if done.is_file() else None
    if last is None or json.loads(done.read_text()) != info:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        train(cfg, run_dir, show=show, init_policy=model, extra_data=extra_data)
        done.write_text(json.dumps(info, indent=2))
        last = latest_checkpoint(run_dir)
        assert last is not None  # train() always writes a final checkpoint
    return SwanPolicy.from_pretrained(last).eval(), info


def dagger_rounds(run: Path) -> list[Path]:
    """The DAgger rounds a run labelled (``dagger/round_<r>.safetensors``, r >= 1), in order.

    Round 0, where present, holds a teacher's own episodes (method ``distill``), not
    states the learner visited.
    """
    rounds = [
        (int(p.stem.split("_", 1)[1]), p)
        for p in (run / "dagger").glob("round_*.safetensors")
        if p.stem.split("_", 1)[1].isdigit()
    ]
    return [p for r, p in sorted(rounds) if r >= 1]

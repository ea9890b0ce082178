"""Tiny ``swan train`` invocations shared by the reliability tests (16x16 images, few steps)."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "reach_bc.yaml")


def tiny_train(demos: Path, *extra: str) -> list[str]:
    """``swan train`` argv: BC on Reach-v0 at 16x16, 6 steps, a checkpoint every 2."""
    sets = [
        "env.kwargs={width: 16, height: 16}",
        "policy.encoder.channels=[4, 4]",
        "policy.encoder.strides=[2, 1]",
        "policy.head.hidden=[8]",
        "policy.head.proprio_hidden=8",
        f"demos.path={demos}",
        "method=bc",
        "bc.steps=6",
        "bc.batch_size=4",
        "bc.warmup_steps=1",
        "eval.every=0",
        "eval.at_end=false",
        "log.log_every=2",
        "log.checkpoint_every=2",
        "log.tensorboard=false",
        *extra,
    ]
    return ["train", "--config", CONFIG, *(a for s in sets for a in ("--set", s))]


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (to prove nothing changed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }

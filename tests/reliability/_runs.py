"""Tiny ``swan train`` settings shared by the tests: small images, 4-channel convs, few steps."""

from __future__ import annotations

import hashlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "reach_bc.yaml")


# BC + one DAgger round in a few steps: 6 BC steps, 3 on 2 DAgger episodes, 2 eval episodes.
TINY_DAGGER = [
    "bc.steps=6",
    "bc.batch_size=8",
    "bc.warmup_steps=2",
    "dagger.rounds=1",
    "dagger.episodes_per_round=2",
    "dagger.steps_per_round=3",
    "eval.episodes=2",
    "eval.workers=1",
    "log.log_every=2",
    "log.checkpoint_every=3",
]


def tiny_policy(size: int = 32, hidden: str = "[16, 16]") -> list[str]:
    """Config overrides for a tiny pixel policy on ``size`` x ``size`` images."""
    return [
        f"env.kwargs={{width: {size}, height: {size}}}",
        "policy.encoder.channels=[4, 4]",
        "policy.encoder.strides=[2, 1]",
        f"policy.head.hidden={hidden}",
        "policy.head.proprio_hidden=8",
    ]


def set_args(sets: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [a for s in sets for a in ("--set", s)]


def tiny_train(demos: Path, *extra: str) -> list[str]:
    """``swan train`` argv: BC on Reach-v0 at 16x16, 6 steps, a checkpoint every 2."""
    sets = [
        *tiny_policy(16, hidden="[8]"),
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
    return ["train", "--config", CONFIG, *set_args(sets)]


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (to prove nothing changed)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }

"""DAgger: roll out the learner, label every visited state with the expert, aggregate.

:func:`dagger_round` is one round; :func:`round_boundaries` says after which training step
each round collects, and :func:`total_steps` how long a run trains in all. Distillation
(method ``distill``, issue 5) reuses the round with a trained teacher as the labeller:
:func:`teacher_demos` is its round 0, the teacher driving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from swan_policy.config import ExperimentConfig
from swan_policy.evaluate import Episode, run_episodes
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import save_tensors
from swan_policy.spec import PIXELS, PROPRIO
from swan_policy.train.bc import BCData, load_labelled
from swan_policy.train.labellers import Labeller, labelled_vec_env


def total_steps(cfg: ExperimentConfig) -> int:
    """BC steps plus every DAgger round's steps."""
    rounds = cfg.dagger.rounds if cfg.method in ("dagger", "distill") else 0
    return cfg.bc.steps + rounds * cfg.dagger.steps_per_round


def round_boundaries(cfg: ExperimentConfig) -> list[int]:
    """Global steps after which DAgger round r (1-based) collects data."""
    rounds = cfg.dagger.rounds if cfg.method in ("dagger", "distill") else 0
    return [cfg.bc.steps + r * cfg.dagger.steps_per_round for r in range(rounds)]


def dagger_round(
    policy: SwanPolicy,
    cfg: ExperimentConfig,
    round_index: int,
    progress: Any = None,
    labeller: Labeller | None = None,
    episodes: int | None = None,
    beta: float | None = None,
) -> tuple[BCData, float]:
    """Roll out the policy (mixed with the expert w.p. beta), label every visited state
    with the expert's action, and return the new samples and the rollout success rate.

    ``labeller`` (default: the scripted expert), ``episodes`` (default
    ``dagger.episodes_per_round``) and ``beta`` (default ``beta0 * decay^(r-1)``) are
    what distillation's round 0 changes: the teacher drives (beta = 1) and labels.
    """
    dc = cfg.dagger
    if beta is None:
        beta = dc.beta0 * dc.beta_decay ** (round_index - 1)
    n_eps = episodes or dc.episodes_per_round
    vec = labelled_vec_env(cfg, min(cfg.eval.workers, n_eps), labeller)
    policy.eval()
    try:
        seed = cfg.seed * 1_000_003 + 100_000 * round_index  # disjoint from eval seeds
        rng = np.random.default_rng(seed)
        budgets = dc.budget if isinstance(dc.budget, list) else [dc.budget]
        eps: list[Episode] = []
        for i, budget in enumerate(budgets):  # the episodes split evenly across budgets
            count = n_eps // len(budgets) + (i < n_eps % len(budgets))
            if count:
                eps += run_episodes(
                    policy,
                    vec,
                    count,
                    seed + len(eps),
                    budget,
                    collect=True,
                    beta=beta,
                    rng=rng,
                    on_episode=progress,
                    batched=True,
                )
    finally:
        vec.close()
        policy.train()
    pixels, proprio, actions = [], [], []
    for ep in eps:
        assert ep.obs is not None and ep.expert_actions is not None
        pixels += ep.obs[PIXELS]
        proprio += ep.obs[PROPRIO]
        actions += ep.expert_actions
    data = BCData(
        torch.from_numpy(np.stack(pixels)),
        torch.from_numpy(np.stack(proprio).astype(np.float32)),
        torch.from_numpy(np.stack(actions).astype(np.float32)),
    )
    return data, float(np.mean([e.success for e in eps]))


def teacher_demos(
    policy_cfg: Any, cfg: ExperimentConfig, labeller: Labeller, path: Path, show: bool
) -> BCData:
    """Distillation's demonstrations: ``demos.episodes`` episodes that the teacher drives
    and labels (DAgger round 0 with beta = 1), saved to ``path`` and reused on resume."""
    if not path.exists():
        driver = SwanPolicy(policy_cfg)  # its actions are never executed (beta = 1)
        new, success = dagger_round(
            driver, cfg, 0, labeller=labeller, episodes=cfg.demos.episodes, beta=1.0
        )
        save_tensors(path, new.tensors())
        if show:
            print(f"teacher demos: {cfg.demos.episodes} episodes, success {success:.0%}")
    return load_labelled(path)

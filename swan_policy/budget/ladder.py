"""Budget ladder: K nested budget levels, each a compact dense model (DESIGN.md §4).

On a CPU at batch 1, per-unit gating inside an ONNX graph never beat a dense graph
(reference/anchors.md); a physically smaller dense network per budget level did. The
ladder fixes, per gated layer, which units each level keeps:

1. **Calibration.** Observations from calibration rollouts are pushed through the
   gated policy (masked mode) at budget 1.0, recording each unit's activation
   frequency and its mean gate logit.
2. **Ranking.** Per layer, units are ranked by their activation frequency (the
   *score*). Ties are common -- without a sparsity term many units are on for every
   input -- and are broken by the unit's **mean gate logit** on the calibration data
   (how far above its threshold it sits: confident units first), then by index. The
   mean logit is the documented importance measure. ``rank_budgets`` can instead
   average the frequency over several budget caps (how often the network's own top-k
   keeps a unit); on the Reach demo run that ranking was clearly worse (level 0.5:
   56% vs 66% success, level 0.25: 52% vs 70%, 50 episodes each; docs/results.md,
   issue 7), so it is not the default.
3. **Levels.** Level ``b`` keeps the top ``ceil(b * N_ref)`` units of each layer
   (``N_ref``: the unit count budgets refer to, so levels of a compacted policy keep
   their meaning), never more than the units active at least once on the calibration
   data (never-active units are removed exactly, as in compaction), and at least one.
   Every level is a prefix of one ranking, so levels **nest**: a unit kept at 0.25 is
   kept at 0.5.

The level model (:func:`level_policy`) is the policy compacted to the level's units
(:func:`swan_policy.compact.compact_policy`), run at budget 1.0. Its gates either stay
on the kept units as cheap multiplicative masks (``gates="kept"``: a kept unit that its
gate closes for this input stays off, as in training) or are folded away
(``gates="folded"``: every kept unit is always on -- a plain dense network, which
onnxruntime ran 1.8-2.1x faster on Reach because nothing breaks its blocked conv layout;
docs/results.md, issue 7). The ladder is saved as JSON beside the run
(``runs/<name>/ladder.json``).

This module is torch-side: ``swan_policy.budget`` does not import it eagerly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from swan_policy.budget.base import DEFAULT_LEVELS, check_levels
from swan_policy.nn import flops
from swan_policy.nn.gates import units_for_budget
from swan_policy.nn.layers import GatedConv2d
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import CheckpointError, save_json

LADDER_FORMAT = "swan-ladder/1"
LADDER_NAME = "ladder.json"
GateHandling = Literal["kept", "folded"]


@dataclass
class Ladder:
    """Per gated layer, one ranking of units; level ``b`` keeps a prefix of it.

    Attributes:
        levels: the budget levels, largest first.
        ranking: per layer, every unit index, most important first.
        ref_units: per layer, the unit count budgets refer to (``N_ref``).
        active: per layer, units active at least once on the calibration data at b=1.
        score: per layer, per unit, the ranking score (mean frequency over
            ``rank_budgets``).
        frequency: per layer, per unit, the activation frequency at b=1.
        mean_logit: per layer, per unit, the mean gate logit at b=1 (tie-break).
        rank_budgets: the budgets the score averages over.
        samples: calibration observations used.
        source: free text (where the calibration data came from).
    """

    levels: tuple[float, ...]
    ranking: dict[str, list[int]]
    ref_units: dict[str, int]
    active: dict[str, int]
    score: dict[str, list[float]] = field(default_factory=dict)
    frequency: dict[str, list[float]] = field(default_factory=dict)
    mean_logit: dict[str, list[float]] = field(default_factory=dict)
    rank_budgets: tuple[float, ...] = ()
    samples: int = 0
    source: str = ""

    def __post_init__(self) -> None:
        self.levels = check_levels(self.levels)
        for name, order in self.ranking.items():
            if sorted(order) != list(range(len(order))):
                raise ValueError(f"ladder.ranking[{name!r}]: not a permutation of its units")
            if name not in self.ref_units or name not in self.active:
                raise ValueError(f"ladder: layer {name!r} lacks ref_units or active")
            if not 1 <= self.active[name] <= len(order):
                raise ValueError(f"ladder.active[{name!r}]: must be in [1, {len(order)}]")

    @property
    def layers(self) -> list[str]:
        return list(self.ranking)

    def units(self, budget: float) -> dict[str, int]:
        """Units each layer keeps at ``budget``: ``min(ceil(b * N_ref), active)``, >= 1."""
        return {
            name: max(1, min(units_for_budget(budget, self.ref_units[name]), self.active[name]))
            for name in self.ranking
        }

    def keep(self, budget: float) -> dict[str, list[int]]:
        """Per layer, the sorted unit indices kept at ``budget`` (a prefix of the ranking)."""
        return {name: sorted(self.ranking[name][:n]) for name, n in self.units(budget).items()}

    # ------------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {
            "format": LADDER_FORMAT,
            "levels": list(self.levels),
            "ranking": self.ranking,
            "ref_units": self.ref_units,
            "active": self.active,
            "units": {f"{b:g}": self.units(b) for b in self.levels},
            "score": self.score,
            "frequency": self.frequency,
            "mean_logit": self.mean_logit,
            "rank_budgets": list(self.rank_budgets),
            "samples": self.samples,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Ladder:
        """Rebuild from :meth:`to_json` output.

        Raises:
            ValueError: wrong format tag, missing fields or inconsistent rankings.
        """
        if not isinstance(data, Mapping) or data.get("format") != LADDER_FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"ladder: expected format {LADDER_FORMAT!r}, got {got!r}")
        try:
            return cls(
                levels=tuple(float(b) for b in data["levels"]),
                ranking={k: [int(i) for i in v] for k, v in data["ranking"].items()},
                ref_units={k: int(v) for k, v in data["ref_units"].items()},
                active={k: int(v) for k, v in data["active"].items()},
                score={k: [float(x) for x in v] for k, v in data.get("score", {}).items()},
                frequency={k: [float(x) for x in v] for k, v in data.get("frequency", {}).items()},
                mean_logit={
                    k: [float(x) for x in v] for k, v in data.get("mean_logit", {}).items()
                },
                rank_budgets=tuple(float(b) for b in data.get("rank_budgets", ())),
                samples=int(data.get("samples", 0)),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"ladder: malformed file ({type(e).__name__}: {e})") from None

    def save(self, path: str | Path) -> Path:
        """Write the ladder as JSON (atomic)."""
        path = Path(path)
        save_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Ladder:
        """Read a ladder written by :meth:`save`.

        Raises:
            CheckpointError: the file is missing, not JSON or not a ladder (names the path).
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no ladder file") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a JSON ladder file ({e})") from None
        try:
            return cls.from_json(data)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None


# ---------------------------------------------------------------------- calibration
@torch.no_grad()
def calibrate_ladder(
    policy: SwanPolicy,
    observations: Mapping[str, np.ndarray | torch.Tensor],
    levels: Sequence[float] = DEFAULT_LEVELS,
    rank_budgets: Sequence[float] | None = None,
    batch_size: int = 256,
    source: str = "",
) -> Ladder:
    """Rank every gated layer's units on calibration observations (see module doc).

    Args:
        policy: a gated policy.
        observations: batched observations ``{key: [N, ...]}`` (e.g. from rollouts).
        levels: the ladder's budget levels.
        rank_budgets: budgets whose activation frequencies are averaged into the score
            (default ``[1.0]``: the free gate's frequency, see the module doc).
        batch_size: forward batch size.
        source: recorded in the ladder (e.g. ``"20 rollouts of swan_envs/Reach-v0"``).

    Raises:
        ValueError: the policy has no gates, or there are no observations.
    """
    gates = policy.gates()
    if not gates:
        raise ValueError("the policy has no gates: nothing to rank (policy.gate.enabled=false)")
    levels = check_levels(levels)
    budgets = check_levels(rank_budgets if rank_budgets is not None else (1.0,))
    obs = {k: torch.as_tensor(v) for k, v in observations.items()}
    n = int(next(iter(obs.values())).shape[0]) if obs else 0
    if n == 0:
        raise ValueError("calibration needs at least one observation")
    was_training, was_tracking = policy.training, policy.track_stats
    gate_tracking = {k: g.track_stats for k, g in gates.items()}
    policy.eval()
    policy.track_stats = True
    for g in gates.values():
        g.track_stats = True
    device = policy.action_low.device
    freq: dict[float, dict[str, np.ndarray]] = {}
    logit_sum = {k: np.zeros(g.num_units) for k, g in gates.items()}
    try:
        for b in budgets:
            policy.reset_gate_stats()
            for start in range(0, n, batch_size):
                batch = {k: v[start : start + batch_size].to(device) for k, v in obs.items()}
                policy(batch, b, mode="masked")
                if b == 1.0:
                    for k, g in gates.items():
                        logits = g.last_logits
                        assert logits is not None
                        logit_sum[k] += logits.double().sum(0).cpu().numpy()
            freq[b] = {k: g.activation_frequency().cpu().numpy() for k, g in gates.items()}
        if 1.0 not in freq:  # the free gate's frequency decides which units are ever used
            policy.reset_gate_stats()
            for start in range(0, n, batch_size):
                batch = {k: v[start : start + batch_size].to(device) for k, v in obs.items()}
                policy(batch, 1.0, mode="masked")
                for k, g in gates.items():
                    logits = g.last_logits
                    assert logits is not None
                    logit_sum[k] += logits.double().sum(0).cpu().numpy()
            free = {k: g.activation_frequency().cpu().numpy() for k, g in gates.items()}
        else:
            free = freq[1.0]
    finally:
        policy.reset_gate_stats()
        policy.train(was_training)
        policy.track_stats = was_tracking
        for k, g in gates.items():
            g.track_stats = gate_tracking[k]
    ranking, score, mean_logit, active = {}, {}, {}, {}
    for k in gates:
        s = np.mean([freq[b][k] for b in budgets], axis=0)
        m = logit_sum[k] / n
        # lexicographic: ever active at b = 1 first (a level never keeps a unit that is
        # never on while it drops one that fires), then score (desc), mean logit (desc),
        # index (asc)
        used = (free[k] > 0).astype(np.int8)
        order = np.lexsort((np.arange(s.size), -m, -s, -used))
        ranking[k] = [int(i) for i in order]
        score[k] = [float(x) for x in s]
        mean_logit[k] = [float(x) for x in m]
        active[k] = max(1, int((free[k] > 0).sum()))
    return Ladder(
        levels=levels,
        ranking=ranking,
        ref_units={k: g.num_ref_units for k, g in gates.items()},
        active=active,
        score=score,
        frequency={k: [float(x) for x in free[k]] for k in gates},
        mean_logit=mean_logit,
        rank_budgets=budgets,
        samples=n,
        source=source,
    )


# ---------------------------------------------------------------------- level models
def check_ladder(policy: SwanPolicy, ladder: Ladder) -> None:
    """Raise ``ValueError`` if the ladder was not built for this policy's layers."""
    layers = {k: m.num_units for k, m in policy.gated_layers().items() if m.gate is not None}
    sizes = {k: len(v) for k, v in ladder.ranking.items()}
    if layers != sizes:
        raise ValueError(
            f"ladder does not fit the policy: policy layers {layers}, ladder layers {sizes}"
        )


def level_policy(
    policy: SwanPolicy, ladder: Ladder, budget: float, gates: GateHandling = "folded"
) -> SwanPolicy:
    """The level model: ``policy`` compacted to the ladder's units at ``budget``.

    Run it at budget 1.0 (masked mode). Returned in eval mode with statistics off.

    Args:
        policy: the gated policy the ladder was calibrated on.
        ladder: the ladder.
        budget: the level, in ``(0, 1]`` (usually one of ``ladder.levels``).
        gates: ``"kept"`` (gates stay on the kept units) or ``"folded"`` (removed: every
            kept unit always on, a plain dense network).
    """
    check_ladder(policy, ladder)
    if gates not in ("kept", "folded"):
        raise ValueError(f"gates: expected 'kept' or 'folded', got {gates!r}")
    from swan_policy.compact import compact_policy

    keep = {k: torch.tensor(v, dtype=torch.long) for k, v in ladder.keep(budget).items()}
    level = compact_policy(policy, keep)
    if gates == "folded":
        level = fold_all_gates(level)
    level.eval()
    quiet(level)
    return level


def fold_all_gates(policy: SwanPolicy) -> SwanPolicy:
    """The same weights without gate networks: every unit always on (ungated layers).

    Exact only where every gate is always open; on a ladder level it turns "kept unit,
    gated per input" into "kept unit, always computed" (see the module doc).
    """
    cfg = policy.config
    new_cfg = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"enabled": False})})
    new = SwanPolicy(new_cfg)
    gate_parts = (".gate_fc.", ".gate_down.", ".gate_up.")
    state = {k: v for k, v in policy.state_dict().items() if not any(p in k for p in gate_parts)}
    new.load_state_dict(state, strict=True)
    return new.train(policy.training)


def quiet(policy: SwanPolicy) -> SwanPolicy:
    """Switch off gate and MAC statistics (inference-only bookkeeping)."""
    policy.track_stats = False
    for g in policy.gates().values():
        g.track_stats = False
    return policy


def graph_macs(policy: SwanPolicy) -> int:
    """MACs per sample of the policy run densely at budget 1 (every unit computed),
    gate networks included: what its ONNX graph executes."""
    total = policy.dense_macs()
    n_in = policy.image_channels or 0
    for layer in policy.gated_layers().values():
        if layer.gate is not None:
            if isinstance(layer, GatedConv2d):
                total += flops.conv_gate_macs(n_in, layer.in_hw, layer.num_units)
            else:
                total += flops.lowrank_gate_macs(
                    layer.linear.in_features, layer.rank, layer.num_units
                )
        n_in = layer.num_units
    return int(total)

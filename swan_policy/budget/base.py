"""What every compute-budget scheduler shares: the step it sees (:class:`StepInfo`),
the ladder's checks (:func:`check_levels`, :func:`snap`) and the :class:`Scheduler` base.

numpy + the standard library only (the torch-free deploy runtime imports it). The
kinds live in :mod:`swan_policy.budget.schedulers`, which re-exports these names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from swan_policy.budget._checks import _is_number

DEFAULT_LEVELS: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)


@dataclass(frozen=True)
class StepInfo:
    """What a scheduler may look at before choosing the budget of a control step.

    Attributes:
        step: index of the step in the episode (0 at the first step after reset).
        obs: the observation the policy is about to act on (dict of arrays).
        action: the action executed at the previous step (None at step 0).
        margin: gate-score margin of the previous forward pass, >= 0; small means
            many gates sat close to their decision boundary (an uncertain, "hard"
            input). None when unknown.
        latency_ms: measured latency of the previous step's forward pass, in ms. It is
            attributed to the level the scheduler returned at the previous step.
        elapsed_ms: time already spent in the current control period before the
            forward pass (observation transfer, validation), in ms.
        phase: a task phase name (e.g. from the robot's state machine), or None.
    """

    step: int = 0
    obs: Mapping[str, np.ndarray] | None = None
    action: np.ndarray | None = None
    margin: float | None = None
    latency_ms: float | None = None
    elapsed_ms: float = 0.0
    phase: str | None = None


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Ladder levels sorted from the largest down; each in ``(0, 1]``, no duplicates.

    Raises:
        ValueError: empty, out of range or duplicated levels.
    """
    if isinstance(levels, str | bytes) or not isinstance(levels, Sequence):
        raise ValueError(f"levels: expected a list of numbers, got {levels!r}")
    if not all(_is_number(b) for b in levels):
        raise ValueError(f"levels: expected a list of numbers, got {list(levels)!r}")
    out = tuple(sorted((float(b) for b in levels), reverse=True))
    if not out:
        raise ValueError("levels: expected at least one level")
    if any(not 0.0 < b <= 1.0 or math.isnan(b) for b in out):
        raise ValueError(f"levels: each level must be in (0, 1], got {list(levels)!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"levels: duplicated level in {list(levels)!r}")
    return out


def snap(budget: float, levels: Sequence[float]) -> float:
    """The largest level not above ``budget`` (the cheapest level if all are above).

    Snapping down never spends more than asked, which is what an average-budget
    constraint needs. ``levels`` must be sorted from the largest down.
    """
    for level in levels:
        if level <= budget + 1e-9:
            return level
    return levels[-1]


class Scheduler:
    """Base class: chooses one ladder level per control step.

    Subclasses implement :meth:`_choose`; :meth:`budget` is the public entry point and
    also records ``step.latency_ms`` against the level chosen at the previous step.

    Args:
        levels: the budget ladder (default 1.0, 0.75, 0.5, 0.25).
    """

    kind = "base"
    # constructor arguments that are stored under their own names: spec() reads them back
    spec_fields: tuple[str, ...] = ()

    def __init__(self, levels: Sequence[float] = DEFAULT_LEVELS) -> None:
        self.levels = check_levels(levels)
        self._last: float | None = None

    def reset(self) -> None:
        """Start a new episode (call before its first step)."""
        self._last = None

    def budget(self, step: StepInfo) -> float:
        """The budget of this control step: one of :attr:`levels`."""
        if step.latency_ms is not None and self._last is not None:
            self.observe_latency(self._last, step.latency_ms)
        b = self._choose(step)
        self._last = b
        return b

    def observe_latency(self, level: float, ms: float) -> None:
        """Record a measured forward latency at ``level`` (used by :class:`Deadline`;
        the other kinds ignore it). Also useful to warm up before the first step."""

    def spec(self) -> dict[str, Any]:
        """The config that rebuilds this scheduler with :func:`make_scheduler`."""
        fields = {name: getattr(self, name) for name in self.spec_fields}
        return {"kind": self.kind, "levels": list(self.levels), **fields}

    def _choose(self, step: StepInfo) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "kind")
        return f"{type(self).__name__}({args})"

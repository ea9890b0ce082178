"""Compute-budget schedulers: which budget level for the next control step (DESIGN.md §5).

numpy + the standard library only: the torch-free deploy runtime imports this module,
and ``swan eval`` uses the very same classes, so a scheduler behaves identically in
simulation and on the robot.

One interface::

    sched = make_scheduler({"kind": "adaptive", "target": 0.4})
    sched.reset()                                  # at each episode start
    for t in range(horizon):
        b = sched.budget(StepInfo(step=t, obs=obs, action=last_action,
                                  margin=margin, latency_ms=last_latency_ms))
        ...run the policy at budget b (one of sched.levels)...

Every budget returned is one of the ladder levels (default 1.0, 0.75, 0.5, 0.25): the
deploy runtime holds one dense graph per level. Schedulers hold no randomness, so the
same sequence of inputs always gives the same budgets.

Kinds:

* :class:`Fixed` -- always the same level.
* :class:`Deadline` -- the largest level whose measured p99 latency fits the slack left
  in the control period, with hysteresis, falling back to the cheapest level.
* :class:`Adaptive` -- more compute on steps a cheap signal calls hard (gate-score
  margin, action change or observation change), under a token bucket that keeps the
  mean budget of every episode prefix <= a target.
* :class:`Schedule` -- a per-phase / per-step table.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from swan_policy.budget._checks import (
    _check_count,
    _check_finite,
    _check_fraction,
    _check_positive,
    _is_finite,
    _whole,
)
from swan_policy.budget.base import DEFAULT_LEVELS, Scheduler, StepInfo, check_levels, snap

KINDS = ("fixed", "deadline", "adaptive", "schedule")
SIGNALS = ("margin", "action", "obs")


class Fixed(Scheduler):
    """Always the same budget, snapped down to a level.

    Args:
        budget: in ``(0, 1]``.
        levels: the ladder.
    """

    kind = "fixed"

    def __init__(self, budget: float = 1.0, levels: Sequence[float] = DEFAULT_LEVELS) -> None:
        super().__init__(levels)
        _check_fraction("budget", budget)
        self.target = float(budget)
        self.level = snap(self.target, self.levels)

    def _choose(self, step: StepInfo) -> float:
        return self.level

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "budget": self.target}


class Deadline(Scheduler):
    """The largest level whose measured p99 latency fits the slack left in the period.

    ``slack = deadline_ms - step.elapsed_ms - safety_ms``. Each level keeps a window of
    its last ``window`` latencies (fed through ``StepInfo.latency_ms`` or
    :meth:`observe_latency`). A level with no measurement yet counts as fitting (so it
    gets measured); warm every level up with :meth:`observe_latency` for a
    conservative start. Latency is assumed to grow with the level, so a level above
    a level that does not fit is never chosen.

    Hysteresis: stepping *down* happens at once when the current level's p99 no longer
    fits; stepping *up* needs the higher level's p99 to fit within
    ``(1 - hysteresis) * slack`` for ``up_after`` consecutive steps. When no level
    fits, the cheapest level is used.

    Re-probing: a level excluded because its measured p99 does not fit is not run, so
    its window would never change and one slow step (a first onnxruntime call, a
    hiccup of the machine) would ban it for good. Instead, once it has not run (nor
    been measured) for its back-off period -- ``window`` scheduler steps at first -- its
    window is forgotten: it counts as unmeasured again, and is stepped up to through
    the usual hysteresis. If that retry is too slow again, its back-off doubles (up to
    ``64 * window`` steps); once a retry fits, the back-off returns to ``window``. What a
    user sees: a level hit by a one-off spike comes back after about ``window`` steps,
    and a level that is truly too slow costs at most one slow step per back-off period.

    Args:
        deadline_ms: the control period (or the part of it the policy may use), ms.
        window: latencies kept per level for the p99.
        hysteresis: fraction of the slack kept free before stepping up.
        up_after: consecutive steps a higher level must fit before stepping up.
        safety_ms: fixed margin subtracted from the slack.
        levels: the ladder.
    """

    kind = "deadline"
    spec_fields = ("deadline_ms", "window", "hysteresis", "up_after", "safety_ms")
    BACKOFF_CAP = 64  # the longest back-off, in windows

    def __init__(
        self,
        deadline_ms: float,
        window: int = 100,
        hysteresis: float = 0.1,
        up_after: int = 3,
        safety_ms: float = 0.0,
        levels: Sequence[float] = DEFAULT_LEVELS,
    ) -> None:
        super().__init__(levels)
        _check_positive("deadline_ms", deadline_ms)
        window = _check_count("window", window)
        _check_finite("hysteresis", hysteresis)
        if not 0.0 <= hysteresis < 1.0:
            raise ValueError(f"hysteresis: must be in [0, 1), got {hysteresis!r}")
        up_after = _check_count("up_after", up_after)
        _check_finite("safety_ms", safety_ms)
        if not safety_ms >= 0.0:
            raise ValueError(f"safety_ms: must be >= 0, got {safety_ms!r}")
        self.deadline_ms = float(deadline_ms)
        self.window = window
        self.hysteresis = float(hysteresis)
        self.up_after = up_after
        self.safety_ms = float(safety_ms)
        self._latency: dict[float, deque[float]] = {b: deque(maxlen=window) for b in self.levels}
        self._current: float | None = None
        self._up_count = 0
        # re-probing (see the class docstring): steps since each level was last measured,
        # its back-off, and the levels whose window was forgotten for a retry
        self._idle = dict.fromkeys(self.levels, 0)
        self._backoff = dict.fromkeys(self.levels, window)
        self._probing: set[float] = set()
        # p99 per level, dropped when its window changes: a step asks for up to
        # 2 * len(levels) + 1 of them, and np.percentile costs ~50-250 us each -- as much
        # as the policy's own forward pass at a small level
        self._p99: dict[float, float | None] = {}

    def reset(self) -> None:
        """New episode: the level restarts from the top; latency windows and back-offs
        are kept (they describe the machine, not the episode)."""
        super().reset()
        self._current = None
        self._up_count = 0

    def budget(self, step: StepInfo) -> float:
        # checked before the step's latency is recorded: a refused step changes nothing
        if not _is_finite(step.elapsed_ms) or step.elapsed_ms < 0:
            raise ValueError(f"elapsed_ms: must be finite and >= 0, got {step.elapsed_ms!r}")
        return super().budget(step)

    def _check_level(self, level: float) -> None:
        if level not in self._latency:
            raise ValueError(f"level: {level!r} is not one of {list(self.levels)}")

    def observe_latency(self, level: float, ms: float) -> None:
        self._check_level(level)
        if not _is_finite(ms) or ms < 0:
            raise ValueError(f"latency_ms: must be finite and >= 0, got {ms!r}")
        self._latency[level].append(float(ms))
        self._p99.pop(level, None)
        self._idle[level] = 0

    def retry_after(self, level: float) -> int:
        """Steps a level excluded for its p99 waits before it is probed again."""
        self._check_level(level)
        return self._backoff[level]

    def p99(self, level: float) -> float | None:
        """99th percentile of the level's latency window (None: not measured yet)."""
        self._check_level(level)
        if level not in self._p99:
            window = self._latency[level]
            # np.percentile(window, 99, method="higher"), exactly: the value at sorted
            # index ceil(0.99 * (n - 1)); a sort of <= `window` floats costs a few us
            n = len(window)
            self._p99[level] = sorted(window)[min(math.ceil(0.99 * (n - 1)), n - 1)] if n else None
        return self._p99[level]

    def _fits(self, level: float, slack: float) -> bool:
        p = self.p99(level)
        return p is None or p <= slack

    def _reprobe(self, slack: float) -> None:
        """Judge the retries measured since the last step; forget the windows of levels
        excluded for their p99 that have waited out their back-off."""
        for level in self.levels:
            if level in self._probing and self._latency[level]:  # a retry ran: judge it
                self._probing.discard(level)
                if self._fits(level, slack):
                    self._backoff[level] = self.window
                else:
                    cap = self.BACKOFF_CAP * self.window
                    self._backoff[level] = min(2 * self._backoff[level], cap)
            elif (
                self._idle[level] >= self._backoff[level]
                and self._latency[level]
                and not self._fits(level, slack)
            ):
                self._latency[level].clear()  # unmeasured again: it may be stepped up to
                self._p99.pop(level, None)
                self._probing.add(level)
            self._idle[level] += 1

    def _choose(self, step: StepInfo) -> float:
        slack = self.deadline_ms - step.elapsed_ms - self.safety_ms
        self._reprobe(slack)
        # largest level that fits, never above one that does not (latency grows with b)
        best = self.levels[-1]
        for level in reversed(self.levels):  # cheapest first
            if not self._fits(level, slack):
                break
            best = level
        current = self._current
        if current is None or best <= current:
            self._current, self._up_count = best, 0  # start, stay, or step down at once
            return best
        # a higher level fits: step up one level, only with room to spare for a while
        up = self.levels[self.levels.index(current) - 1]
        if self._fits(up, (1.0 - self.hysteresis) * slack):
            self._up_count += 1
        else:
            self._up_count = 0
        if self._up_count >= self.up_after:
            self._current, self._up_count = up, 0
            return up
        return current


class Adaptive(Scheduler):
    """More compute on hard steps, mean budget of every episode prefix <= ``target``.

    Hardness signal (cheap, from what the controller already has):

    * ``"action"``: ``||a_{t-1} - a_{t-2}||`` -- the policy is changing its mind;
    * ``"obs"``: mean absolute change of the observation since the last step
      (pixels scaled to [0, 1]; every key counts equally);
    * ``"margin"``: ``1 / (margin + eps)`` of the last forward's gate scores -- gates
      near their threshold mean an input the network is unsure about.

    The raw signal is divided by its running mean (exponential, rate ``ema``), so the
    thresholds are scale-free. The ratio ``z`` maps to the budget asked for, piecewise
    linearly through ``(low, cheapest level)``, ``(1, target)`` and ``(high, top
    level)``: a typical step asks for the target, a step ``high`` times harder than
    usual for the top level. Until the signal is known (first steps) the top level is
    asked for.

    Token bucket: each step earns ``target`` tokens and the chosen level costs its
    budget in tokens; the scheduler never spends more tokens than it holds (the ask is
    snapped down to an affordable level). Starting from ``initial`` tokens, the
    budgets of the first ``n`` steps sum to at most ``initial + n * target``; with the
    default ``initial=0`` every prefix of every episode has mean budget <= ``target``.
    The bucket holds at most ``capacity`` tokens (bounding bursts); when easy steps
    would overflow it, the scheduler spends the overflow instead of discarding it, so
    the mean budget stays close to the target rather than far below it.

    Args:
        target: the average budget, at least the cheapest level.
        signal: ``"action"``, ``"obs"`` or ``"margin"``.
        low / high: signal ratios mapped to the cheapest / the top level
            (``0 <= low < 1 < high``).
        ema: rate of the running mean of the signal, in ``(0, 1]``.
        capacity: most tokens the bucket holds (in budget-steps; bounds bursts).
        initial: tokens at the start of each episode, ``<= capacity``.
        levels: the ladder.
    """

    kind = "adaptive"
    spec_fields = ("target", "signal", "low", "high", "ema", "capacity", "initial")

    def __init__(
        self,
        target: float,
        signal: str = "action",
        low: float = 0.5,
        high: float = 2.0,
        ema: float = 0.2,
        capacity: float = 4.0,
        initial: float = 0.0,
        levels: Sequence[float] = DEFAULT_LEVELS,
    ) -> None:
        super().__init__(levels)
        _check_fraction("target", target)
        if target < self.levels[-1] - 1e-9:
            raise ValueError(
                f"target: must be >= the cheapest level {self.levels[-1]:g}, got {target!r}"
            )
        if signal not in SIGNALS:
            raise ValueError(f"signal: expected one of {', '.join(SIGNALS)}, got {signal!r}")
        for name, value in (
            ("low", low),
            ("high", high),
            ("ema", ema),
            ("capacity", capacity),
            ("initial", initial),
        ):
            _check_finite(name, value)
        if not 0.0 <= low < 1.0:
            raise ValueError(f"low: must be in [0, 1), got {low!r}")
        if not high > 1.0:
            raise ValueError(f"high: must be > 1, got {high!r}")
        if not 0.0 < ema <= 1.0:
            raise ValueError(f"ema: must be in (0, 1], got {ema!r}")
        if not capacity >= self.levels[0]:
            raise ValueError(
                f"capacity: must be >= the top level {self.levels[0]:g}, got {capacity!r}"
            )
        if not 0.0 <= initial <= capacity:
            raise ValueError(f"initial: must be in [0, capacity], got {initial!r}")
        self.target = float(target)
        self.signal = signal
        self.low, self.high = float(low), float(high)
        self.ema = float(ema)
        self.capacity = float(capacity)
        self.initial = float(initial)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.tokens = self.initial
        self._mean: float | None = None  # running mean of the raw signal
        self._prev_obs: dict[str, np.ndarray] | None = None
        self._prev_action: np.ndarray | None = None

    def hardness(self, step: StepInfo) -> float | None:
        """The raw signal of this step (None: not available yet). Updates the history."""
        raw: float | None = None
        if self.signal == "margin":
            if step.margin is not None:
                raw = 1.0 / (max(float(step.margin), 0.0) + 1e-6)
        elif self.signal == "action":
            if step.action is not None:
                # a copy: the caller may refill its action buffer in place
                action = np.array(step.action, dtype=np.float64).ravel()
                if self._prev_action is not None:
                    raw = float(np.linalg.norm(action - self._prev_action))
                self._prev_action = action
        elif step.obs is not None:  # "obs"
            obs = {k: _as_unit_float(v) for k, v in step.obs.items()}
            if self._prev_obs is not None and obs:
                prev = self._prev_obs
                if obs.keys() != prev.keys() or any(
                    v.shape != prev[k].shape for k, v in obs.items()
                ):
                    was = {k: v.shape for k, v in prev.items()}
                    now = {k: v.shape for k, v in obs.items()}
                    raise ValueError(
                        f"obs: the observation changed within the episode (keys and shapes "
                        f"{was} -> {now}); call reset() when a new episode starts"
                    )
                # sum / size, not .mean(): numpy's mean costs ~15 us per call on these
                # small arrays, a scheduler's whole budget on a fast controller
                raw = sum(float(np.abs(v - prev[k]).sum()) / v.size for k, v in obs.items())
                raw /= len(obs)
            self._prev_obs = obs
        return raw

    def _choose(self, step: StepInfo) -> float:
        raw = self.hardness(step)
        top, cheapest = self.levels[0], self.levels[-1]
        if raw is None or not math.isfinite(raw):
            wanted = top
        else:
            z = raw / self._mean if self._mean else (1.0 if raw == 0 else self.high)
            if z <= 1.0:
                frac = max((z - self.low) / (1.0 - self.low), 0.0)
                wanted = cheapest + frac * (self.target - cheapest)
            else:
                frac = min((z - 1.0) / (self.high - 1.0), 1.0)
                wanted = self.target + frac * (top - self.target)
            self._mean = raw if self._mean is None else (1 - self.ema) * self._mean + self.ema * raw
        # token bucket: earn the target, spend the level, never more than is held
        self.tokens += self.target
        affordable = [b for b in self.levels if b <= self.tokens + 1e-9] or [cheapest]
        b = snap(wanted, affordable)
        # spend what would overflow the bucket at the next step rather than lose it
        overflow = self.tokens + self.target - self.capacity
        if b < overflow:
            b = min((a for a in affordable if a >= overflow), default=affordable[0])
        self.tokens = min(self.tokens - b, self.capacity)
        return b


class Schedule(Scheduler):
    """A budget table: per task phase and/or per step.

    ``phases`` maps a phase name (``StepInfo.phase``) to a budget; ``steps`` lists
    ``[first_step, budget]`` pairs (the last pair whose ``first_step <= step``
    applies). A known phase wins over the step table; ``default`` covers the rest.
    Budgets snap down to the ladder.

    Args:
        steps: ``[[0, 1.0], [20, 0.5]]`` -- 1.0 for steps 0-19, then 0.5.
        phases: ``{"approach": 0.5, "grasp": 1.0}``.
        default: budget where neither table applies.
        levels: the ladder.
    """

    kind = "schedule"

    def __init__(
        self,
        steps: Sequence[Sequence[float]] = (),
        phases: Mapping[str, float] | None = None,
        default: float = 1.0,
        levels: Sequence[float] = DEFAULT_LEVELS,
    ) -> None:
        super().__init__(levels)
        _check_fraction("default", default)
        table: list[tuple[int, float]] = []
        if isinstance(steps, str | bytes) or not isinstance(steps, Sequence):
            raise ValueError(f"steps: expected a list of [first_step, budget], got {steps!r}")
        for i, row in enumerate(steps):
            if (
                isinstance(row, str | bytes)
                or not isinstance(row, Sequence)
                or len(row) != 2
                or _whole(row[0]) is None
                or row[0] < 0
            ):
                raise ValueError(f"steps[{i}]: expected [first_step >= 0, budget], got {row!r}")
            _check_fraction(f"steps[{i}]", row[1])
            table.append((int(row[0]), float(row[1])))
        if phases is not None and not isinstance(phases, Mapping):
            raise ValueError(f"phases: expected a mapping of phase name to budget, got {phases!r}")
        firsts = [s for s, _ in table]
        if firsts != sorted(set(firsts)):
            raise ValueError(f"steps: first steps must be strictly increasing, got {firsts}")
        for name, b in (phases or {}).items():
            _check_fraction(f"phases.{name}", b)
        self.steps = table
        self.phases = {str(k): float(v) for k, v in (phases or {}).items()}
        self.default = float(default)

    def _choose(self, step: StepInfo) -> float:
        b = self.default
        if step.phase is not None and step.phase in self.phases:
            b = self.phases[step.phase]
        else:
            for first, budget in self.steps:
                if first > step.step:
                    break
                b = budget
        return snap(b, self.levels)

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "steps": [[s, b] for s, b in self.steps],
            "phases": dict(self.phases),
            "default": self.default,
        }


_CLASSES: dict[str, type[Scheduler]] = {
    "fixed": Fixed,
    "deadline": Deadline,
    "adaptive": Adaptive,
    "schedule": Schedule,
}
# the short string form "kind:value" fills this field
_SHORT_FIELD = {"fixed": "budget", "deadline": "deadline_ms", "adaptive": "target"}
_REQUIRED = {"deadline": ("deadline_ms",), "adaptive": ("target",)}
_FIELDS: dict[str, tuple[str, ...]] = {
    "fixed": ("budget", "levels"),
    "deadline": ("deadline_ms", "window", "hysteresis", "up_after", "safety_ms", "levels"),
    "adaptive": ("target", "signal", "low", "high", "ema", "capacity", "initial", "levels"),
    "schedule": ("steps", "phases", "default", "levels"),
}
_INT_FIELDS = ("window", "up_after")


def make_scheduler(
    spec: Mapping[str, Any] | str, levels: Sequence[float] | None = None
) -> Scheduler:
    """Build a scheduler from a config dict or a short string.

    Strings: ``"fixed"``, ``"fixed:0.5"``, ``"deadline:20"`` (ms), ``"adaptive:0.4"``
    (target mean budget). Dicts: ``{"kind": "adaptive", "target": 0.4, "signal":
    "obs"}`` -- the fields are the constructor arguments of the kind's class.
    ``levels``: the ladder of a spec that names none (default: ``DEFAULT_LEVELS``);
    the spec is checked against this ladder, e.g. a bundle's own levels.

    Raises:
        ValueError: one line naming the bad field (``scheduler.<field>: ...``).
    """
    if isinstance(spec, str):
        kind, sep, value = spec.strip().partition(":")
        data: dict[str, Any] = {"kind": kind}
        if sep:
            if kind not in _SHORT_FIELD:
                raise ValueError(
                    f"scheduler: {kind!r} takes no ':value' "
                    f"(short forms: {', '.join(k + ':<value>' for k in _SHORT_FIELD)})"
                )
            try:
                data[_SHORT_FIELD[kind]] = float(value)
            except ValueError:
                raise ValueError(
                    f"scheduler.{_SHORT_FIELD[kind]}: expected a number, got {value!r}"
                ) from None
    elif isinstance(spec, Mapping):
        data = dict(spec)
    else:
        raise ValueError(f"scheduler: expected a dict or a string, got {type(spec).__name__}")
    kind = data.pop("kind", None)
    if not isinstance(kind, str) or kind not in _CLASSES:  # a YAML list/dict is unhashable
        raise ValueError(f"scheduler.kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    unknown = sorted(set(data) - set(_FIELDS[kind]), key=str)  # YAML keys may be ints
    if unknown:
        raise ValueError(
            f"scheduler.{unknown[0]}: unknown field for {kind!r} "
            f"(known: {', '.join(_FIELDS[kind])})"
        )
    if levels is not None and "levels" not in data:
        data["levels"] = list(levels)
    missing = [f for f in _REQUIRED.get(kind, ()) if f not in data]
    if missing:
        raise ValueError(f"scheduler.{missing[0]}: required for {kind!r}")
    for name, value in data.items():
        if name in _INT_FIELDS:
            whole = _whole(value)
            if whole is None:
                raise ValueError(f"scheduler.{name}: expected an integer, got {value!r}")
            data[name] = whole
        elif name in ("signal",):
            if not isinstance(value, str):
                raise ValueError(f"scheduler.{name}: expected a string, got {value!r}")
        elif name in ("levels", "steps", "phases"):
            pass  # the constructor checks their structure
        elif not _is_finite(value):
            raise ValueError(f"scheduler.{name}: expected a finite number, got {value!r}")
    try:
        return _CLASSES[kind](**data)
    except (ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"scheduler.{msg}") from None


def _as_unit_float(x: np.ndarray) -> np.ndarray:
    """A float32 copy (never a view: the caller may refill its buffers in place)."""
    a = np.asarray(x)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return a.astype(np.float32)  # copies by default, float32 input included


__all__ = [
    "DEFAULT_LEVELS",
    "KINDS",
    "SIGNALS",
    "Adaptive",
    "Deadline",
    "Fixed",
    "Schedule",
    "Scheduler",
    "StepInfo",
    "check_levels",
    "make_scheduler",
    "snap",
]

"""Torch-free policy runtime for a robot's controller: numpy + onnxruntime only.

A *bundle* (written by ``swan export``) holds one dense ONNX graph per budget level
(``level_<b>.onnx``) and a ``bundle.json`` manifest. :class:`PolicyRuntime` preloads
one onnxruntime session per level (switching between preloaded sessions costs
nothing; reference/anchors.md), and each control step

1. validates the observation (keys, shape, dtype, HWC layout, finite values) with
   :class:`swan_policy.spec.ObsSpec` -- onnxruntime never sees a bad input;
2. asks its scheduler (:mod:`swan_policy.budget.schedulers`, numpy-only, the same
   classes ``swan eval`` uses) for the level of this step;
3. runs that level's session (1 intra-op thread, full graph optimisation: on a small
   CPU, a second thread never helped and made p99 much worse);
4. records the step's latency in a fixed-size window per level (memory stays flat
   however long the loop runs) and counts deadline misses.

Usage in a control loop::

    from swan_policy.deploy import PolicyRuntime

    runtime = PolicyRuntime.load("bundles/reach", scheduler="deadline:5", deadline_ms=5)
    runtime.reset()                      # at each episode / task start
    while running:
        action = runtime.act({"pixels": hwc_uint8, "proprio": proprio_f32})
        robot.apply(action)              # already clipped to the action bounds
    print(runtime.stats())               # p50/p99/max latency per level, misses

Imports: the standard library, numpy, onnxruntime, :mod:`swan_policy.spec` and
:mod:`swan_policy.budget.schedulers` -- never torch (a test imports this module in a
process where importing torch fails).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from swan_policy.budget.schedulers import Adaptive, Scheduler, StepInfo, make_scheduler
from swan_policy.deploy.manifest import (
    ACTION,
    BUNDLE_FORMAT,
    MANIFEST_NAME,
    MARGIN,
    BundleError,
    check_graph,
    check_int8_judged,
    is_number,
    level_file,
    load_session,
    read_manifest,
    session_options,
    sha256_file,
)
from swan_policy.spec import ObservationError, ObsSpec


def _warm_up(
    path: Path, sess: ort.InferenceSession, feed: Mapping[str, np.ndarray], runs: int
) -> None:
    """Run a session ``runs`` times: onnxruntime's first calls are several times slower
    than the rest, and must not land on the robot's first steps (or in a deadline
    scheduler's latency window)."""
    try:
        for _ in range(runs):
            sess.run(None, dict(feed))
    except Exception as e:  # onnxruntime raises its own exception types per failure
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{path}: onnxruntime cannot run this graph ({first})") from None


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _check_deadline(value: float | None) -> None:
    if value is not None and not (is_number(value) and value > 0 and math.isfinite(value)):
        raise ValueError(f"deadline_ms: must be finite and > 0, got {value!r}")


@dataclass
class _Latency:
    """Fixed-size latency record of one level: a ring of the last ``window`` steps."""

    ring: np.ndarray
    count: int = 0
    max_ms: float = 0.0
    misses: int = 0

    def add(self, ms: float, missed: bool) -> None:
        self.ring[self.count % self.ring.size] = ms
        self.count += 1
        self.max_ms = max(self.max_ms, ms)
        self.misses += int(missed)

    def values(self) -> np.ndarray:
        return self.ring[: min(self.count, self.ring.size)]


class PolicyRuntime:
    """Runs a bundle: validated observation in, clipped action out, one level per step.

    Build with :meth:`load`. Not thread-safe (one control loop per runtime).

    Attributes:
        levels: the bundle's budget levels, largest first.
        obs_spec: the observation the policy accepts.
        action_low / action_high: the action bounds (actions are clipped to them).
        manifest: the bundle's ``bundle.json``.
        scheduler: picks the level of each step.
        deadline_ms: a step (validation + scheduling + inference) longer than this is
            a deadline miss (None: not counted).
    """

    def __init__(
        self,
        bundle_dir: Path,
        manifest: dict[str, Any],
        sessions: Mapping[float, ort.InferenceSession],
        scheduler: Scheduler,
        deadline_ms: float | None = None,
        window: int = 10_000,
    ) -> None:
        self.bundle_dir = bundle_dir
        self.manifest = manifest
        self.levels = tuple(sorted(sessions, reverse=True))
        self._sessions = dict(sessions)
        self.obs_spec = ObsSpec.from_json(manifest["obs_spec"])
        self.input_names: list[str] = list(manifest["inputs"])
        self.action_low = np.asarray(manifest["action_low"], dtype=np.float32)
        self.action_high = np.asarray(manifest["action_high"], dtype=np.float32)
        if set(scheduler.levels) - set(self.levels):
            raise BundleError(
                f"scheduler levels {list(scheduler.levels)} are not all in the bundle's "
                f"levels {list(self.levels)}"
            )
        self.scheduler = scheduler
        _check_deadline(deadline_ms)
        _check_int("window", window, 1)
        self.deadline_ms = deadline_ms
        # the action, and the gate margin where the graph has it (gates kept)
        self._outputs = {
            b: [ACTION] + [o.name for o in s.get_outputs() if o.name == MARGIN]
            for b, s in self._sessions.items()
        }
        self._window = window
        self.reset_stats()
        self.reset()

    @property
    def action_dim(self) -> int:
        return int(self.action_low.size)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        scheduler: Scheduler | Mapping[str, Any] | str | None = None,
        deadline_ms: float | None = None,
        precision: str = "fp32",
        threads: int = 1,
        window: int = 10_000,
        verify: bool = True,
        warmup: int = 3,
        int8_unjudged: bool = False,
    ) -> PolicyRuntime:
        """Load a bundle, check it against its graphs, and preload one session per level.

        Args:
            bundle_dir: a directory written by ``swan export``.
            scheduler: a :class:`Scheduler`, or a config for :func:`make_scheduler`
                (``"fixed:0.5"``, ``"deadline:5"``, ``{"kind": "adaptive", ...}``) whose
                levels default to the bundle's; None: the top level every step.
            deadline_ms: count steps longer than this as deadline misses.
            precision: ``"fp32"``, or ``"int8"`` to use the int8 graphs the export kept
                after judging them in closed loop (levels whose int8 graph was dropped,
                or that have none, run fp32; int8 graphs never judged are refused).
            threads: intra-op threads per session (1 is fastest at batch 1 here).
            window: latencies kept per level for the percentiles.
            verify: check each file's SHA-256 against the manifest (a corrupted or
                replaced file is refused before onnxruntime parses it).
            warmup: runs of each session on a neutral observation (zeros) before
                returning: onnxruntime's first calls are several times slower. Not
                counted in :meth:`stats` nor shown to the scheduler; 0 disables.
            int8_unjudged: with ``precision="int8"``, also run int8 graphs that have no
                closed-loop verdict yet -- for the export's own judgement only.

        Raises:
            BundleError: the bundle is missing, malformed, corrupted, or its graphs
                disagree with its manifest (names the file and the field).
            ValueError: a bad argument or scheduler config (one line naming the field).
        """
        if precision not in ("fp32", "int8"):
            raise ValueError(f"precision: expected 'fp32' or 'int8', got {precision!r}")
        _check_int("threads", threads, 1)
        _check_int("window", window, 1)
        _check_int("warmup", warmup, 0)
        _check_deadline(deadline_ms)
        bundle = Path(bundle_dir)
        manifest = read_manifest(bundle)
        levels = sorted((float(lvl["budget"]) for lvl in manifest["levels"]), reverse=True)
        sched = cls._make_scheduler(scheduler, levels)
        if precision == "int8" and not int8_unjudged:
            check_int8_judged(bundle, manifest)
        spec = ObsSpec.from_json(manifest["obs_spec"])
        inputs: list[str] = list(manifest["inputs"])
        neutral = {
            name: np.zeros((1, *spec.entries[name].shape), dtype=spec.entries[name].dtype)
            for name in inputs
        }
        sessions: dict[float, ort.InferenceSession] = {}
        for lvl in manifest["levels"]:
            entry = lvl
            int8 = lvl.get("int8")
            # int8 graphs the export dropped are marked kept=false (and deleted)
            if precision == "int8" and int8 is not None and int8.get("kept", int8_unjudged):
                entry = int8
            path = bundle / entry["file"]
            if not path.is_file():
                raise BundleError(f"{path}: file not found (listed in {MANIFEST_NAME})")
            if verify and sha256_file(path) != entry["sha256"]:
                raise BundleError(
                    f"{path}: SHA-256 does not match {MANIFEST_NAME} "
                    "(the file is corrupted or was replaced; re-export the bundle)"
                )
            sess = load_session(path, threads)
            check_graph(path, sess, spec, inputs, len(manifest["action_low"]))
            _warm_up(path, sess, neutral, warmup)
            sessions[float(lvl["budget"])] = sess
        if isinstance(sched, Adaptive) and sched.signal == "margin":
            lacking = [
                b
                for b in sched.levels
                if b in sessions and MARGIN not in {o.name for o in sessions[b].get_outputs()}
            ]
            if lacking:
                raise ValueError(
                    f"{bundle}: scheduler signal 'margin' needs the graphs' {MARGIN!r} "
                    f"output, which the graphs of levels {', '.join(f'{b:g}' for b in lacking)} "
                    "lack (`swan export` folds the gates by default); use signal 'action' or "
                    "'obs', or re-export with `swan export --gates kept`"
                )
        return cls(bundle, manifest, sessions, sched, deadline_ms, window)

    @staticmethod
    def _make_scheduler(
        spec: Scheduler | Mapping[str, Any] | str | None, levels: Sequence[float]
    ) -> Scheduler:
        if isinstance(spec, Scheduler):
            return spec
        if spec is None:
            spec = {"kind": "fixed", "budget": max(levels)}
        # checked against the bundle's ladder (a spec naming its own levels keeps them)
        return make_scheduler(spec, levels=levels)

    # ------------------------------------------------------------------ acting
    def reset(self) -> None:
        """Start an episode: resets the scheduler and the per-episode step state."""
        self.scheduler.reset()
        self._step = 0
        self._last_action: np.ndarray | None = None
        self._margin: float | None = None
        self._forward_ms: float | None = None
        self.last_level: float | None = None
        self.last_latency_ms: float | None = None

    def act(self, obs: Mapping[str, Any], phase: str | None = None) -> np.ndarray:
        """One control step: the action (float32 ``[A]``, within the bounds).

        Args:
            obs: ``{"pixels": HxWxC uint8, "proprio": float [P]}`` (one step, no batch).
            phase: optional task phase for a ``schedule`` scheduler.

        Raises:
            ObservationError: wrong keys, shape, dtype, layout or a NaN/Inf (names the
                key); raised before onnxruntime sees the input. The caller's arrays
                are never mutated.
            FloatingPointError: the graph produced a non-finite action.
        """
        start = time.perf_counter()
        arrays = self.obs_spec.validate(obs)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        # the previous step's measurements go to the scheduler once: a step that fails
        # from here on leaves none behind to be blamed on its level at the next step
        forward_ms, self._forward_ms = self._forward_ms, None
        margin, self._margin = self._margin, None
        level = self.scheduler.budget(
            StepInfo(
                step=self._step,
                obs=arrays,
                action=self._last_action,
                margin=margin,
                latency_ms=forward_ms,
                elapsed_ms=elapsed_ms,
                phase=phase,
            )
        )
        feed = {name: arrays[name][None] for name in self.input_names}
        names = self._outputs[level]
        t_run = time.perf_counter()
        outputs = self._sessions[level].run(names, feed)
        end = time.perf_counter()
        action = outputs[0][0]
        if not np.isfinite(action).all():
            raise FloatingPointError(
                f"level {level:g} produced a non-finite action (corrupted weights?)"
            )
        self._margin = float(outputs[1][0]) if len(outputs) > 1 else None
        self._forward_ms = (end - t_run) * 1e3
        total_ms = (end - start) * 1e3
        missed = self.deadline_ms is not None and total_ms > self.deadline_ms
        self._latency[level].add(total_ms, missed)
        self._budget_sum += level
        self._steps += 1
        self._step += 1
        self._last_action = action
        self.last_level, self.last_latency_ms = level, total_ms
        return action

    def predict(self, obs: Mapping[str, Any], level: float | None = None) -> np.ndarray:
        """Batched actions ``[B, A]`` at one level (validated; no scheduler, no stats).

        For offline checks (parity, evaluation), not the control loop.
        """
        level = self.levels[0] if level is None else float(level)
        if level not in self._sessions:
            raise ValueError(f"level: {level!r} is not one of {list(self.levels)}")
        arrays = self.obs_spec.validate(obs, batched=True)
        feed = {name: arrays[name] for name in self.input_names}
        out: np.ndarray = self._sessions[level].run([ACTION], feed)[0]
        return out

    # ------------------------------------------------------------------ statistics
    def reset_stats(self) -> None:
        """Forget the recorded latencies, misses and budgets."""
        self._latency = {b: _Latency(np.zeros(self._window)) for b in self._sessions}
        self._budget_sum = 0.0
        self._steps = 0

    def stats(self) -> dict[str, Any]:
        """Steps, mean budget, deadline misses and latency (ms) per level and overall.

        Percentiles cover the last ``window`` steps of each level (overall: those
        windows pooled); counts, maxima and misses cover every step since the last
        :meth:`reset_stats`.
        """

        def summary(values: np.ndarray, count: int, max_ms: float, misses: int) -> dict[str, Any]:
            if count == 0:
                return {"steps": 0}
            return {
                "steps": count,
                "p50_ms": float(np.percentile(values, 50)),
                "p99_ms": float(np.percentile(values, 99)),
                "max_ms": max_ms,
                "mean_ms": float(values.mean()),
                "deadline_misses": misses,
            }

        per_level = {
            f"{b:g}": summary(r.values(), r.count, r.max_ms, r.misses)
            for b, r in self._latency.items()
        }
        records = list(self._latency.values())
        pooled = np.concatenate([r.values() for r in records])
        overall = summary(
            pooled,
            self._steps,
            max((r.max_ms for r in records), default=0.0),
            sum(r.misses for r in records),
        )
        return {
            "steps": self._steps,
            "mean_budget": self._budget_sum / self._steps if self._steps else float("nan"),
            "deadline_ms": self.deadline_ms,
            "deadline_misses": sum(r.misses for r in records),
            "scheduler": self.scheduler.spec(),
            "overall": overall,
            "levels": per_level,
        }


__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST_NAME",
    "BundleError",
    "ObservationError",
    "PolicyRuntime",
    "level_file",
    "load_session",
    "read_manifest",
    "session_options",
    "sha256_file",
]

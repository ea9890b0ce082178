"""Looking inside a trained policy: what its gates do over an episode (``swan inspect``).

One rollout in this process records, at every control step, the hard 0/1 gate of each
unit of each gated layer, the budget the step ran at and the scripted expert's task
phase (``reach`` / ``grasp`` / ``carry`` / ``place`` on PickPlace; see
``swan_envs.experts``). From such traces:

* :func:`plot_heatmap` -- units x time steps, per layer (which units fire when);
* :func:`plot_phases` -- per-layer active fraction over time, task phases shaded,
  the step's budget as a line;
* :func:`write_video` -- the rollout's camera image beside a live gate strip;
* :func:`summarise_gates` -- never / always active and phase-specific units, and the
  mean active fraction per phase (see :func:`phase_specific_units` for the rule).

The phase at step ``t`` is the expert's phase for the observation the policy acts on at
``t`` (what ``ExpertLabels`` puts in the info dict, and what a per-phase
``Schedule`` reads). The policy runs through :meth:`SwanPolicy.act` -- the same
batch-1 sparse path as deployment -- and the gates come from
:meth:`SwanPolicy.last_gates`, which rebuilds the mask from the fast path's indices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from swan_policy.budget.schedulers import Scheduler, StepInfo
from swan_policy.config import EnvConfig
from swan_policy.envs import check_spaces, make_env
from swan_policy.evaluate import PHASE, ExpertLabels
from swan_policy.policy import SwanPolicy

NO_PHASE = "unlabelled"  # the phase of every step when the env has no scripted expert
PHASE_HIGH = 0.9  # phase-specific: active in >= this fraction of the phase's steps ...
PHASE_LOW = 0.1  # ... and in <= this fraction of the steps of every other phase
MIN_PHASE_STEPS = 5  # phases with fewer steps (all episodes pooled) are not judged
VIDEO_SIZE = (480, 960)  # (height, width) of every video frame, in pixels
VIDEO_DPI = 100
STRIP_COLUMNS = 32  # unit cells per row of a layer's grid in the video strip


@dataclass
class Trace:
    """One episode, step by step (``T`` steps).

    Attributes:
        seed: the episode's reset seed.
        gates: per gated layer, the hard gates ``[T, N]`` (bool) of each step.
        budgets: the budget of each step ``[T]``.
        phases: the expert's phase at each step (:data:`NO_PHASE` without an expert).
        rewards: the reward of each step ``[T]``.
        success: the env's ``is_success`` at the last step.
        frames: ``env.render()`` before each step (only when recorded).
    """

    seed: int
    gates: dict[str, np.ndarray]
    budgets: np.ndarray
    phases: list[str]
    rewards: np.ndarray
    success: bool
    frames: list[np.ndarray] | None = None

    @property
    def length(self) -> int:
        return len(self.budgets)

    @property
    def ret(self) -> float:
        return float(self.rewards.sum())

    def active_fraction(self) -> dict[str, np.ndarray]:
        """Per layer, the fraction of its units active at each step ``[T]``."""
        return {name: g.mean(axis=1) for name, g in self.gates.items()}

    def save_npz(self, path: Path) -> Path:
        """The trace without frames, as ``.npz`` (no pickle): ``budgets``, ``rewards``,
        ``phases`` (str), ``success`` and ``gates.<layer>`` (uint8 ``[T, N]``)."""
        arrays: dict[str, np.ndarray] = {
            "budgets": self.budgets,
            "rewards": self.rewards,
            "phases": np.asarray(self.phases, dtype=str),
            "success": np.asarray(self.success),
            "seed": np.asarray(self.seed),
        }
        arrays.update({f"gates.{k}": v.astype(np.uint8) for k, v in self.gates.items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # numpy stubs: kwargs typed as bool
        return path


def make_inspect_env(env_cfg: EnvConfig, render: bool = False) -> gym.Env[Any, Any]:
    """The config's env with its scripted expert attached when one exists (task phases
    in ``info["phase"]``), rendering ``rgb_array`` frames when ``render``."""
    env = make_env(env_cfg, render_mode="rgb_array" if render else None)
    try:
        return ExpertLabels(env)
    except ValueError:  # no scripted expert for this env: steps stay unlabelled
        return env


def expert_phases(env: gym.Env[Any, Any]) -> tuple[str, ...]:
    """The phases the env's scripted expert can report (``()`` without an expert)."""
    return tuple(env.expert.phases) if isinstance(env, ExpertLabels) else ()


def last_step_gates(policy: SwanPolicy) -> dict[str, np.ndarray]:
    """Per gated layer, the hard gates ``[N]`` (bool) of the last batch-1 forward.

    Ungated layers (a gate folded away by compaction) are left out.
    """
    out = {}
    for name, g in policy.last_gates().items():
        if g is not None:
            out[name] = g[0].detach().cpu().numpy() > 0.5
    return out


def _gate_margin(policy: SwanPolicy) -> float | None:
    """Mean ``|logit|`` over the gated units of the last forward (as ``act_grouped``)."""
    logits = [g.last_logits for g in policy.gates().values()]
    if not logits or any(t is None for t in logits):
        return None
    return float(torch.stack([t.abs().mean() for t in logits if t is not None]).mean())


def trace_episode(
    policy: SwanPolicy,
    env: gym.Env[Any, Any],
    seed: int,
    scheduler: Scheduler,
    frames: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> Trace:
    """Play one episode with :meth:`SwanPolicy.act` and record every step's gates.

    Args:
        policy: the policy (in eval mode for the episode, its mode restored after;
            it acts deterministically).
        env: from :func:`make_inspect_env` (``render=True`` if ``frames``).
        seed: the reset seed.
        scheduler: picks each step's budget from a :class:`StepInfo` (observation,
            previous action, gate margin and latency of the previous forward, phase);
            ``Fixed(b, (b,))`` for a constant budget ``b``.
        frames: keep ``env.render()`` before each step (for :func:`write_video`).
        on_step: called with the step index after each step (progress bars).

    Raises:
        SpaceMismatchError: the policy cannot act in ``env``.
        ValueError: the policy has no gated layer, or ``frames`` and the env renders
            none.
    """
    if not policy.gates():
        raise ValueError("the policy has no gated layer (every gate was folded away)")
    check_spaces(policy, env)
    was_training = policy.training
    policy.eval()
    try:
        return _trace(policy, env, seed, scheduler, frames, on_step)
    finally:
        policy.train(was_training)


def _trace(
    policy: SwanPolicy,
    env: gym.Env[Any, Any],
    seed: int,
    scheduler: Scheduler,
    frames: bool,
    on_step: Callable[[int], None] | None,
) -> Trace:
    scheduler.reset()
    obs, info = env.reset(seed=seed)
    gates: dict[str, list[np.ndarray]] = {}
    budgets: list[float] = []
    phases: list[str] = []
    rewards: list[float] = []
    shots: list[np.ndarray] | None = [] if frames else None
    action: np.ndarray | None = None
    margin: float | None = None
    latency: float | None = None
    success, done, t = False, False, 0
    while not done:
        phase = str(info.get(PHASE) or NO_PHASE)
        b = scheduler.budget(
            StepInfo(
                step=t,
                obs=obs,
                action=action,
                margin=margin,
                latency_ms=latency,
                phase=phase if PHASE in info else None,
            )
        )
        if shots is not None:
            frame = env.render()
            if not isinstance(frame, np.ndarray):
                raise ValueError(f"{env} renders no rgb_array frames (swan inspect --no-video)")
            shots.append(frame)
        start = time.perf_counter()
        action = policy.act(obs, b)
        latency = (time.perf_counter() - start) * 1e3
        margin = _gate_margin(policy)
        for name, g in last_step_gates(policy).items():
            gates.setdefault(name, []).append(g)
        budgets.append(b)
        phases.append(phase)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        done = bool(terminated or truncated)
        success = bool(info.get("is_success", False))
        if on_step is not None:
            on_step(t)
        t += 1
    return Trace(
        seed=seed,
        gates={k: np.stack(v) for k, v in gates.items()},
        budgets=np.asarray(budgets, dtype=np.float64),
        phases=phases,
        rewards=np.asarray(rewards, dtype=np.float64),
        success=success,
        frames=shots,
    )


# ---------------------------------------------------------------------- summaries
def phase_segments(phases: Sequence[str]) -> list[tuple[str, int, int]]:
    """Runs of equal phase: ``[(phase, first_step, end_step_exclusive), ...]``."""
    out: list[tuple[str, int, int]] = []
    for t, p in enumerate(phases):
        if out and out[-1][0] == p:
            out[-1] = (p, out[-1][1], t + 1)
        else:
            out.append((p, t, t + 1))
    return out


def phase_order(phases: Sequence[str]) -> list[str]:
    """Distinct phases in order of first appearance."""
    return list(dict.fromkeys(phases))


def phase_specific_units(
    gates: np.ndarray,
    phases: Sequence[str],
    high: float = PHASE_HIGH,
    low: float = PHASE_LOW,
    min_steps: int = MIN_PHASE_STEPS,
) -> dict[str, list[int]]:
    """Units that fire in one task phase and (almost) never in the others.

    Unit ``u`` is *specific to phase p* when, counting only the phases with at least
    ``min_steps`` steps (the *judged* phases), ``u`` is active in at least a fraction
    ``high`` of p's steps and in at most a fraction ``low`` of the steps of every other
    judged phase. With fewer than two judged phases no unit is phase-specific (a unit
    always on in the only phase is "always active", not specific to it).

    Args:
        gates: ``[T, N]`` 0/1 (or bool) gates, the steps of any number of episodes.
        phases: the phase of each of the ``T`` steps.
        high: the minimum active fraction inside the phase.
        low: the maximum active fraction in every other judged phase.
        min_steps: phases with fewer steps are ignored (neither candidate nor rival).

    Returns:
        ``{phase: sorted unit indices}`` for every judged phase (empty lists included),
        in order of first appearance; ``{}`` with fewer than two judged phases.
    """
    g = np.asarray(gates, dtype=np.float64)
    labels = np.asarray(phases, dtype=str)
    if g.ndim != 2 or len(labels) != g.shape[0]:
        raise ValueError(
            f"gates must be [T, N] with one phase per step, got {g.shape} and {len(labels)}"
        )
    judged = [p for p in phase_order(list(labels)) if int((labels == p).sum()) >= min_steps]
    if len(judged) < 2:
        return {}
    freq = {p: g[labels == p].mean(axis=0) for p in judged}
    out = {}
    for p in judged:
        rivals = np.stack([freq[q] for q in judged if q != p])
        specific = (freq[p] >= high) & (rivals <= low).all(axis=0)
        out[p] = [int(u) for u in np.flatnonzero(specific)]
    return out


def summarise_gates(
    traces: Sequence[Trace],
    high: float = PHASE_HIGH,
    low: float = PHASE_LOW,
    min_steps: int = MIN_PHASE_STEPS,
    known_phases: Sequence[str] = (),
) -> dict[str, Any]:
    """What the gates did over all steps of ``traces`` (episodes pooled), JSON-ready.

    Returns:
        ``{"criteria": {"phase_high", "phase_low", "min_phase_steps"},
        "steps": total, "phases": {phase: steps}, "unseen_phases": [known phases that
        no step had], "episodes": [{"seed", "success",
        "return", "length", "mean_budget", "phases": {phase: steps}}],
        "success_rate", "return_mean", "mean_budget",
        "layers": {name: {"units", "mean_active_fraction",
        "active_fraction_per_phase": {phase: mean fraction of units active},
        "unit_frequency": [fraction of steps each unit is active],
        "never_active": [units], "always_active": [units],
        "phase_specific": {phase: [units]}}}}``. Unit lists hold indices into the
        layer's units (channels of a conv, features of a linear layer);
        ``phase_specific`` follows :func:`phase_specific_units`.

    The expert's phase follows its *own* state machine (e.g. PickPlace's reach -> grasp
    needs the gripper centred on the cube), which the policy's trajectory need not
    trigger: phases in ``known_phases`` (see :func:`expert_phases`) that no step had
    are listed in ``unseen_phases``, so a single-phase summary is not mistaken for a
    single-phase task.
    """
    if not traces:
        raise ValueError("summarise_gates needs at least one trace")
    phases = [p for tr in traces for p in tr.phases]
    budgets = np.concatenate([tr.budgets for tr in traces])
    labels = np.asarray(phases, dtype=str)
    order = phase_order(phases)
    layers: dict[str, Any] = {}
    for name in traces[0].gates:
        g = np.concatenate([tr.gates[name] for tr in traces]).astype(np.float64)
        freq = g.mean(axis=0)
        per_step = g.mean(axis=1)
        layers[name] = {
            "units": int(g.shape[1]),
            "mean_active_fraction": float(per_step.mean()),
            "active_fraction_per_phase": {p: float(per_step[labels == p].mean()) for p in order},
            "unit_frequency": [float(f) for f in freq],
            "never_active": [int(u) for u in np.flatnonzero(freq == 0.0)],
            "always_active": [int(u) for u in np.flatnonzero(freq == 1.0)],
            "phase_specific": phase_specific_units(g, phases, high, low, min_steps),
        }
    return {
        "criteria": {"phase_high": high, "phase_low": low, "min_phase_steps": min_steps},
        "steps": len(phases),
        "phases": {p: int((labels == p).sum()) for p in order},
        "unseen_phases": [p for p in known_phases if p not in order],
        "episodes": [
            {
                "seed": tr.seed,
                "success": tr.success,
                "return": tr.ret,
                "length": tr.length,
                "mean_budget": float(tr.budgets.mean()),
                "phases": {p: tr.phases.count(p) for p in phase_order(tr.phases)},
            }
            for tr in traces
        ],
        "success_rate": float(np.mean([tr.success for tr in traces])),
        "return_mean": float(np.mean([tr.ret for tr in traces])),
        "mean_budget": float(budgets.mean()),
        "layers": layers,
    }


def _units_text(units: Sequence[int], limit: int = 16) -> str:
    if not units:
        return "0"
    shown = ", ".join(str(u) for u in units[:limit])
    return f"{len(units)} [{shown}{', ...' if len(units) > limit else ''}]"


def summary_text(summary: dict[str, Any], title: str = "") -> str:
    """Human-readable form of :func:`summarise_gates`' result (``summary.txt``)."""
    c = summary["criteria"]
    lines = [title] if title else []
    eps = summary["episodes"]
    lines.append(
        f"{len(eps)} episode(s), {summary['steps']} steps: success {summary['success_rate']:.0%}, "
        f"mean return {summary['return_mean']:.2f}, mean budget {summary['mean_budget']:.2f}"
    )
    for e in eps:
        lines.append(
            f"  seed {e['seed']}: {'success' if e['success'] else 'failure'}, "
            f"return {e['return']:.2f}, {e['length']} steps, mean budget {e['mean_budget']:.2f}"
        )
    lines.append("phases (steps): " + ", ".join(f"{p} {n}" for p, n in summary["phases"].items()))
    if summary["unseen_phases"]:
        lines.append(
            f"note: the expert's phase(s) {', '.join(summary['unseen_phases'])} never occurred: "
            "the phase follows the expert's own state machine, which the policy's trajectory "
            "need not trigger"
        )
    lines.append(
        f"phase-specific: active in >= {c['phase_high']:.0%} of one phase's steps and "
        f"<= {c['phase_low']:.0%} of every other phase's; phases with < "
        f"{c['min_phase_steps']} steps not judged"
    )
    for name, s in summary["layers"].items():
        lines.append("")
        lines.append(
            f"{name} ({s['units']} units): mean active fraction {s['mean_active_fraction']:.2f}"
        )
        lines.append(
            "  per phase: "
            + ", ".join(f"{p} {f:.2f}" for p, f in s["active_fraction_per_phase"].items())
        )
        lines.append(f"  never active: {_units_text(s['never_active'])}")
        lines.append(f"  always active: {_units_text(s['always_active'])}")
        if s["phase_specific"]:
            for p, units in s["phase_specific"].items():
                lines.append(f"  specific to {p}: {_units_text(units)}")
        else:
            lines.append("  phase-specific: not judged (fewer than two phases long enough)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- figures
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _phase_colors(order: Sequence[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10")
    return {p: cmap(i % 10) for i, p in enumerate(order)}


def plot_heatmap(trace: Trace, path: Path, title: str = "") -> Path:
    """PNG: per gated layer, a units x time steps 0/1 image (dark: active), phase
    changes as dashed lines and phase names on top."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    names = list(trace.gates)
    heights = [min(max(trace.gates[n].shape[1] / 32, 1.0), 3.0) for n in names]
    fig, axes = plt.subplots(
        len(names),
        1,
        figsize=(max(6.0, min(trace.length / 10, 16.0)), sum(heights) + 1.2),
        dpi=100,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
        layout="constrained",
    )
    # inactive light grey, active dark blue: a fully active layer does not vanish
    cmap = ListedColormap(["#e6e6e6", "#08306b"])
    segments = phase_segments(trace.phases)
    for ax, name in zip(axes[:, 0], names, strict=True):
        g = trace.gates[name]
        ax.imshow(
            g.T.astype(np.uint8),
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            vmin=0,
            vmax=1,
            origin="lower",
            extent=(-0.5, trace.length - 0.5, -0.5, g.shape[1] - 0.5),
        )
        for _, start, _ in segments[1:]:
            ax.axvline(start - 0.5, color="tab:red", lw=1, ls="--")
        ax.set_ylabel(f"{name}\nunit", fontsize=8)
    top = axes[0, 0]
    if len(segments) > 1 or segments[0][0] != NO_PHASE:
        sec = top.secondary_xaxis("top")
        sec.set_xticks([(s + e - 1) / 2 for _, s, e in segments])
        sec.set_xticklabels([p for p, _, _ in segments], fontsize=7)
    axes[-1, 0].set_xlabel("time step")
    fig.suptitle(
        (title or f"gate activity, episode seed {trace.seed}") + " -- dark: active", fontsize=10
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_phases(trace: Trace, path: Path, title: str = "") -> Path:
    """PNG: per-layer active fraction over time, the budget of each step (dashed), the
    expert's phases as labelled bands."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100, layout="constrained")
    segments = phase_segments(trace.phases)
    colors = _phase_colors(phase_order(trace.phases))
    for p, start, end in segments:
        ax.axvspan(start - 0.5, end - 0.5, color=colors[p], alpha=0.15, lw=0)
        ax.text((start + end - 1) / 2, 1.07, p, ha="center", va="bottom", fontsize=7)
    steps = np.arange(trace.length)
    for name, frac in trace.active_fraction().items():
        ax.plot(steps, frac, lw=1.2, label=name)
    ax.step(steps, trace.budgets, where="mid", color="black", ls="--", lw=1.2, label="budget")
    ax.set_xlim(-0.5, trace.length - 0.5)
    ax.set_ylim(0.0, 1.15)
    ax.set_xlabel("time step")
    ax.set_ylabel("fraction of units active")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    ax.set_title(title or f"active fraction per layer, episode seed {trace.seed}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _unit_grid(gates: np.ndarray, columns: int) -> np.ndarray:
    """``[N]`` gates -> ``[rows, columns]`` float grid, NaN past the last unit."""
    n = gates.shape[0]
    cols = min(n, columns)
    grid = np.full(math.ceil(n / cols) * cols, np.nan)
    grid[:n] = gates
    return grid.reshape(-1, cols)


def write_video(trace: Trace, path: Path, fps: int = 10) -> int:
    """MP4 of the rollout: the camera image (``env.render()``) beside a gate strip with
    one grid of unit cells per layer (lit: active at this step), the step's phase and
    budget in the title. Frames are :data:`VIDEO_SIZE`; one frame per step.

    Returns:
        The number of frames written.

    Raises:
        ValueError: the trace holds no frames.
    """
    import imageio.v2 as imageio

    if not trace.frames:
        raise ValueError("the trace has no frames (trace_episode(..., frames=True))")
    plt = _pyplot()
    names = list(trace.gates)
    grids = {n: _unit_grid(trace.gates[n][0].astype(np.float64), STRIP_COLUMNS) for n in names}
    h, w = VIDEO_SIZE
    fig = plt.figure(figsize=(w / VIDEO_DPI, h / VIDEO_DPI), dpi=VIDEO_DPI)
    outer = fig.add_gridspec(1, 2, width_ratios=[1.0, 1.0], left=0.02, right=0.98, top=0.88)
    cam_ax = fig.add_subplot(outer[0, 0])
    cam = cam_ax.imshow(trace.frames[0])
    cam_ax.set_axis_off()
    strip = outer[0, 1].subgridspec(
        len(names), 1, hspace=0.6, height_ratios=[g.shape[0] + 1 for g in grids.values()]
    )
    cmap = plt.get_cmap("inferno").with_extremes(bad="white")
    images, axes = {}, {}
    for i, name in enumerate(names):
        ax = fig.add_subplot(strip[i, 0])
        images[name] = ax.imshow(grids[name], cmap=cmap, vmin=0.0, vmax=1.0, aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
        axes[name] = ax
    heading = fig.suptitle("", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, macro_block_size=1) as writer:
        for t, frame in enumerate(trace.frames):
            cam.set_data(frame)
            for name in names:
                g = trace.gates[name][t]
                images[name].set_data(_unit_grid(g.astype(np.float64), STRIP_COLUMNS))
                axes[name].set_title(f"{name}: {int(g.sum())}/{g.size}", fontsize=8)
            heading.set_text(
                f"seed {trace.seed}  step {t + 1}/{trace.length}  phase {trace.phases[t]}  "
                f"budget {trace.budgets[t]:.2f}"
            )
            fig.canvas.draw()
            writer.append_data(np.asarray(fig.canvas.buffer_rgba())[..., :3])  # type: ignore[attr-defined]  # Agg canvas
    plt.close(fig)
    return len(trace.frames)

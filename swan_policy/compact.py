"""Dense conversion: a smaller SwanPolicy holding only the kept units of each layer.

Units never active on calibration data can be removed exactly: their output was always
multiplied by a zero gate. The compacted layers keep their gates (on the remaining
units) and the unit count budgets refer to, so ``k = ceil(b * N)`` is unchanged and
the compact model reproduces the original on inputs whose active units were kept.

On top of that (issue 6): :func:`plan_compaction` reads calibration statistics (which
units to keep at a threshold, which gates were always on), :func:`fold_gates` removes
always-on gates (the layer becomes a plain dense layer), and
:func:`compact_with_report` runs the whole procedure on rollouts -- calibration,
compaction, parity and success on held-out episodes -- behind ``swan compact``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from swan_policy.config import EnvConfig
from swan_policy.nn import flops
from swan_policy.nn.encoders import keypoint_index
from swan_policy.nn.layers import compact_linear
from swan_policy.policy import SwanPolicy

if TYPE_CHECKING:
    from swan_policy.evaluate import Episode


def keep_from_stats(policy: SwanPolicy, threshold: float = 0.0) -> dict[str, Tensor]:
    """Per gated layer, indices of units active in more than ``threshold`` of samples.

    At least one unit per layer is kept (the most frequent), so shapes stay valid.
    """
    keep: dict[str, Tensor] = {}
    for name, gate in policy.gates().items():
        freq = gate.activation_frequency()
        idx = (freq > threshold).nonzero().squeeze(1)
        keep[name] = idx if idx.numel() else freq.argmax().reshape(1)
    return keep


@torch.no_grad()
def compact_policy(policy: SwanPolicy, keep: Mapping[str, Tensor]) -> SwanPolicy:
    """Build the smaller dense-structured policy that holds only ``keep[layer]`` units.

    Args:
        policy: a gated policy.
        keep: per gated layer name (see ``policy.gated_layers()``), sorted unit indices.
            Layers not listed keep all units.
    """
    layers = policy.gated_layers()
    unknown = sorted(set(keep) - set(layers))
    if unknown:
        raise KeyError(f"unknown layers in keep: {unknown}; known: {list(layers)}")
    full = {n: torch.arange(m.num_units) for n, m in layers.items()}
    kept = {n: torch.as_tensor(keep.get(n, full[n])).sort().values for n in layers}
    for n, k in kept.items():  # a duplicated index would feed one unit twice downstream
        size = layers[n].num_units
        if k.numel() == 0:
            raise ValueError(f"keep[{n!r}]: keeps no unit (at least one per layer)")
        if k.dim() != 1 or k.is_floating_point() or k.dtype == torch.bool:
            raise ValueError(f"keep[{n!r}]: expected a 1-D list of unit indices")
        if int(k[0]) < 0 or int(k[-1]) >= size:
            raise ValueError(f"keep[{n!r}]: indices must be in [0, {size}), got {k.tolist()}")
        if bool((k[1:] == k[:-1]).any()):
            raise ValueError(f"keep[{n!r}]: duplicate unit indices {k.tolist()}")
    cfg = policy.config
    old_ref = cfg.ref_units or {}
    ref = {  # a folded (ungated) layer keeps the count it had when it was gated
        n: (m.gate.num_ref_units if m.gate is not None else old_ref.get(n, m.num_units))
        for n, m in layers.items()
    }
    convs = policy.encoder.convs if policy.encoder is not None else []
    channels = [int(kept[f"encoder.layers.{i}"].numel()) for i in range(len(convs))]
    new_cfg = cfg.model_copy(
        update={
            "encoder": cfg.encoder.model_copy(
                update={"channels": channels or cfg.encoder.channels}
            ),
            "head": cfg.head.model_copy(
                update={
                    "hidden": [
                        int(kept[f"head.layers.{j}"].numel())
                        for j in range(len(policy.head.hidden))
                    ]
                }
            ),
            "ref_units": ref,
        }
    )
    # Assemble the compacted weights, layer by layer; a unit's inputs are the kept
    # units of the layer before it.
    state = dict(policy.state_dict())
    keep_in: Tensor | None = None
    for i, conv in enumerate(convs):
        k = kept[f"encoder.layers.{i}"]
        _put(state, f"encoder.layers.{i}.", conv.compacted(k, keep_in).state_dict())
        keep_in = k
    proprio_cols = policy.feature_dim + torch.arange(policy.proprio.out_dim)
    if keep_in is not None:
        keep_in = torch.cat([keypoint_index(keep_in), proprio_cols])
    else:
        keep_in = proprio_cols
    for j, hidden in enumerate(policy.head.hidden):
        k = kept[f"head.layers.{j}"]
        _put(state, f"head.layers.{j}.", hidden.compacted(k, keep_in).state_dict())
        keep_in = k
    _put(state, "head.out.", compact_linear(policy.head.out, keep_in).state_dict())
    new = SwanPolicy(new_cfg)
    new.load_state_dict(state, strict=True)
    for name, gate in new.gates().items():  # runtime setting, not in the state dict
        gate.inject_weight = policy.gates()[name].inject_weight
    return new.train(policy.training)


def _put(state: dict[str, Tensor], prefix: str, sub: Mapping[str, Tensor]) -> None:
    for k, v in sub.items():
        state[prefix + k] = v


# ----------------------------------------------------------------------------- issue 6
PARITY_ATOL = 1e-5  # max |action difference| that counts as "unchanged" (DESIGN.md §3)


def plan_compaction(
    policy: SwanPolicy, threshold: float = 0.0
) -> tuple[dict[str, Tensor], list[str]]:
    """What to keep and which gates to fold, from the policy's gate statistics.

    Run calibration rollouts in eval mode first (the gates accumulate
    ``activation_frequency``). A unit is kept when it was active in more than
    ``threshold`` of the samples; a layer's gate is folded away when every kept unit
    was active in at least ``1 - threshold`` of them (``threshold = 0``: in every
    sample -- the gate never switched a kept unit off, so the fold is exact there).

    Returns:
        ``(keep, fold)``: per gated layer the kept unit indices, and the names of the
        layers whose gate is folded.

    Raises:
        ValueError: ``threshold`` outside ``[0, 1)``, or a gate without statistics.
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    for name, gate in policy.gates().items():
        if float(gate.sample_count) == 0:
            raise ValueError(f"{name}: no gate statistics; run calibration rollouts in eval mode")
    keep = keep_from_stats(policy, threshold)
    fold = [
        name
        for name, gate in policy.gates().items()
        if bool((gate.activation_frequency()[keep[name]] >= 1.0 - threshold).all())
    ]
    return keep, fold


@torch.no_grad()
def fold_gates(policy: SwanPolicy, names: Sequence[str]) -> SwanPolicy:
    """The same policy with the gates of layers ``names`` removed (units always on).

    Exact on inputs where every unit of those layers was active anyway. A folded
    layer has no gate, so it also ignores the budget.
    """
    if not names:
        return policy
    layers = policy.gated_layers()
    for name in names:
        if name not in layers or layers[name].gate is None:
            raise KeyError(f"{name}: not a gated layer of this policy")
    cfg = policy.config
    new_cfg = cfg.model_copy(update={"ungated": sorted({*cfg.ungated, *names})})
    gate_parts = ("gate_fc.", "gate_down.", "gate_up.", "gate.")
    state = {
        k: v
        for k, v in policy.state_dict().items()
        if not any(k.startswith(f"{n}.{p}") for n in names for p in gate_parts)
    }
    new = SwanPolicy(new_cfg)
    new.load_state_dict(state, strict=True)
    for name, gate in new.gates().items():  # runtime setting, not in the state dict
        gate.inject_weight = policy.gates()[name].inject_weight
    return new.train(policy.training)


def graph_macs(policy: SwanPolicy) -> dict[str, int]:
    """Per-layer MACs per sample of the policy's static graph (every unit computed,
    gate networks included): what its dense model executes. Keys as
    :meth:`SwanPolicy.executed_macs`."""
    out: dict[str, int] = {}
    feat = 0
    if policy.encoder is not None:
        n_in = policy.encoder.in_channels
        for i, conv in enumerate(policy.encoder.convs):
            out[f"encoder.layers.{i}"] = int(conv.macs(n_in, conv.num_units))
            n_in = conv.num_units
        out["encoder.pool"] = int(flops.spatial_softmax_macs(n_in, policy.encoder.pool.hw))
        feat = 2 * n_in
    out["proprio"] = int(policy.proprio.macs(1)[0])
    d = feat + policy.proprio.out_dim
    for j, hidden in enumerate(policy.head.hidden):
        out[f"head.layers.{j}"] = int(hidden.macs(d, hidden.num_units))
        d = hidden.num_units
    out["head.out"] = int(flops.linear_macs(d, policy.head.out.out_features))
    return out


@dataclass
class Parity:
    """The compact policy against the original on a set of observations (budget 1)."""

    states: int
    max_action_diff: float
    unseen_units: dict[str, int]  # removed units that were active on these states
    folded_units_off: dict[str, int]  # kept units of folded layers that were off there

    @property
    def exact(self) -> bool:
        return (
            self.max_action_diff <= PARITY_ATOL
            and not any(self.unseen_units.values())
            and not any(self.folded_units_off.values())
        )


@torch.no_grad()
def check_parity(
    original: SwanPolicy,
    compact: SwanPolicy,
    keep: Mapping[str, Tensor],
    fold: Sequence[str],
    obs: Mapping[str, np.ndarray],
    chunk: int = 256,
) -> Parity:
    """Actions of both policies on ``obs`` (batched ``[n, ...]`` arrays), and which units
    the original used there that compaction removed or folded. Leaves the original's
    gate statistics reset."""
    from swan_policy.evaluate import act_batch

    n = len(next(iter(obs.values())))
    was = (original.training, compact.training)
    tracking = (_tracking(original), _tracking(compact))
    original.eval().reset_gate_stats()
    _track(original, True)  # the unit counts below need the statistics on
    compact.eval()
    _track(compact, False)
    diff = 0.0
    try:
        for start in range(0, n, chunk):
            part = {k: v[start : start + chunk] for k, v in obs.items()}
            a = act_batch(original, part, 1.0)
            b = act_batch(compact, part, 1.0)
            diff = max(diff, float(np.abs(a - b).max()))
        unseen, folded_off = {}, {}
        for name, gate in original.gates().items():
            freq = gate.activation_frequency()
            kept = torch.zeros_like(freq, dtype=torch.bool)
            kept[keep[name]] = True
            unseen[name] = int(((freq > 0) & ~kept).sum())
            folded_off[name] = int(((freq < 1) & kept).sum()) if name in fold else 0
    finally:
        _restore_tracking(original, tracking[0])
        _restore_tracking(compact, tracking[1])
        original.reset_gate_stats()
        original.train(was[0])
        compact.train(was[1])
    return Parity(n, diff, unseen, folded_off)


@dataclass
class LayerReport:
    """One layer of a compaction report (MACs per sample)."""

    name: str
    units_before: int  # 0: not a unit layer (pool, proprio MLP, output)
    units_after: int
    gate_after: str  # "gated", "folded" or "none" (never gated)
    macs_before: int  # static graph: every unit computed, gate network included
    macs_after: int
    executed_macs_before: float  # mean per step on the held-out rollouts, budget 1
    executed_macs_after: float
    unseen_units: int  # removed units that were active on held-out states


@dataclass
class CompactionReport:
    """What compaction removed and what it cost (see :func:`compact_with_report`)."""

    threshold: float
    calib_episodes: int
    calib_samples: int
    heldout_episodes: int
    heldout_steps: int
    layers: list[LayerReport]
    macs_before: int
    macs_after: int
    executed_macs_before: float
    executed_macs_after: float
    max_action_diff: float
    unseen_units: int
    folded_units_off: int
    success_before: float
    success_after: float
    tolerance: float = PARITY_ATOL

    @property
    def macs_reduction(self) -> float:
        """Fraction of the static graph's MACs removed."""
        return 1.0 - self.macs_after / self.macs_before

    @property
    def exact(self) -> bool:
        """Held-out actions unchanged (within ``tolerance``), no unit removed or folded
        that the held-out states needed."""
        return (
            self.max_action_diff <= self.tolerance
            and self.unseen_units == 0
            and self.folded_units_off == 0
        )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["macs_reduction"] = self.macs_reduction
        out["exact"] = self.exact
        return out


def compact_with_report(
    policy: SwanPolicy,
    env_cfg: EnvConfig,
    calib_episodes: int = 20,
    threshold: float = 0.0,
    heldout_episodes: int = 10,
    workers: int = 1,
    calib_seed: int = 20_000,
    heldout_seed: int = 30_000,
    on_episode: Callable[[Episode], None] | None = None,
) -> tuple[SwanPolicy, CompactionReport]:
    """Calibrate, compact, fold always-on gates, and check the result on held-out rollouts.

    1. Calibration: ``calib_episodes`` rollouts of ``policy`` at budget 1 (episode
       ``j`` from seed ``calib_seed + j``); the gates count how often each unit is on.
    2. :func:`plan_compaction` -> :func:`compact_policy` -> :func:`fold_gates`.
    3. Held-out: ``heldout_episodes`` rollouts of the original (from ``heldout_seed``;
       keep it apart from the calibration seeds): its success and executed MACs, then
       :func:`check_parity` on every visited state; then the compact policy plays the
       same held-out episodes (its success and executed MACs).

    Parity is checked at budget 1, the budget compaction serves. Removing never-active
    units is exact at every budget (a lower budget only switches units off), but a
    folded layer has no gate left: at b < 1 it keeps every unit where the original
    capped it, so the compact policy differs from the original below budget 1. Lower
    budgets are served by the budget ladder, built from the uncompacted policy
    (``swan export``); the CLI says which layers were folded.
    """
    from swan_policy.envs import check_spaces, make_env
    from swan_policy.evaluate import make_vec_env, run_episodes

    probe = make_env(env_cfg)
    try:
        check_spaces(policy, probe)
    finally:
        probe.close()
    was_training = policy.training
    policy.eval()
    vec = make_vec_env(env_cfg, max(1, min(workers, max(calib_episodes, heldout_episodes))))
    try:
        policy.reset_gate_stats()
        run_episodes(policy, vec, calib_episodes, calib_seed, 1.0, on_episode=on_episode)
        calib_samples = int(policy.gate_stats()["samples"])
        keep, fold = plan_compaction(policy, threshold)
        compact = fold_gates(compact_policy(policy, keep), fold).eval()

        policy.reset_gate_stats()
        held = run_episodes(
            policy, vec, heldout_episodes, heldout_seed, 1.0, collect=True, on_episode=on_episode
        )
        exec_before = dict(policy.gate_stats()["macs_per_step"])
        obs = {
            k: np.concatenate([np.stack(e.obs[k]) for e in held if e.obs is not None])
            for k in policy.obs_spec.entries
        }
        for e in held:
            e.obs = None  # free the images
        parity = check_parity(policy, compact, keep, fold, obs)
        del obs
        compact.reset_gate_stats()
        held_after = run_episodes(
            compact, vec, heldout_episodes, heldout_seed, 1.0, on_episode=on_episode
        )
        exec_after = dict(compact.gate_stats()["macs_per_step"])
    finally:
        vec.close()
        policy.train(was_training)

    before, after = graph_macs(policy), graph_macs(compact)
    layers_before, layers_after = policy.gated_layers(), compact.gated_layers()
    rows = []
    for name in before:
        lb, la = layers_before.get(name), layers_after.get(name)
        gate_after = "none"
        if la is not None and la.gate is not None:
            gate_after = "gated"
        elif name in fold:
            gate_after = "folded"
        rows.append(
            LayerReport(
                name=name,
                units_before=lb.num_units if lb is not None else 0,
                units_after=la.num_units if la is not None else 0,
                gate_after=gate_after,
                macs_before=before[name],
                macs_after=after[name],
                executed_macs_before=float(exec_before.get(name, 0.0)),
                executed_macs_after=float(exec_after.get(name, 0.0)),
                unseen_units=parity.unseen_units.get(name, 0),
            )
        )
    report = CompactionReport(
        threshold=threshold,
        calib_episodes=calib_episodes,
        calib_samples=calib_samples,
        heldout_episodes=heldout_episodes,
        heldout_steps=parity.states,
        layers=rows,
        macs_before=sum(before.values()),
        macs_after=sum(after.values()),
        executed_macs_before=float(sum(exec_before.values())),
        executed_macs_after=float(sum(exec_after.values())),
        max_action_diff=parity.max_action_diff,
        unseen_units=sum(parity.unseen_units.values()),
        folded_units_off=sum(parity.folded_units_off.values()),
        success_before=float(np.mean([e.success for e in held])),
        success_after=float(np.mean([e.success for e in held_after])),
    )
    return compact, report


def _track(policy: SwanPolicy, on: bool) -> None:
    """Switch gate and MAC statistics on or off."""
    policy.track_stats = on
    for gate in policy.gates().values():
        gate.track_stats = on


def _tracking(policy: SwanPolicy) -> tuple[bool, dict[str, bool]]:
    return policy.track_stats, {k: g.track_stats for k, g in policy.gates().items()}


def _restore_tracking(policy: SwanPolicy, saved: tuple[bool, dict[str, bool]]) -> None:
    policy.track_stats = saved[0]
    for k, g in policy.gates().items():
        g.track_stats = saved[1][k]

"""ONNX export: one dense graph per budget level, verified, in a bundle (DESIGN.md §4).

What :func:`export_bundle` writes (``bundles/<name>/``)::

    bundle.json            manifest: observation spec, action bounds, levels, hashes,
                           MACs, parity results, package version, config hash
    level_1.00.onnx ...    one single-file graph per level (opset 18, dynamic batch)
    level_0.50.int8.onnx   optional int8 graphs (kept only if closed-loop success holds)
    gated.onnx             optional: the full gated model with the budget as an input
    ladder.json            the ladder the levels come from

Each graph is exported through a thin wrapper (:class:`PolicyGraph`) whose inputs are
plain tensors -- ``pixels [B, H, W, C] uint8`` (pixel policies) and
``proprio [B, P] float32`` -- and whose body has no Python branching on tensor values,
so the dynamo exporter (``torch.export``) captures it whole. Preprocessing (uint8 ->
float, ``/255 - 0.5`` or the per-image standardisation of ``input_norm="image"``,
proprio normalisation) and postprocessing (tanh, unscale to the
action bounds, clip) are inside the graph: the robot feeds raw sensor arrays and
sends the output to the actuators.

Verification, asserted (an :class:`ExportError` otherwise, and nothing is written):
``onnx.checker.check_model(full_check=True)`` on every graph, and parity of torch vs
onnxruntime within ``atol`` (1e-4) on random, edge and real observations at batch 1
and 16, for every level.

The graph wrappers and :func:`export_graph` are in :mod:`swan_policy.export.graphs`; they
are re-exported here, with :class:`ExportError` and ``OPSET``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from swan_policy import __version__
from swan_policy.budget.ladder import GateHandling, Ladder, graph_macs, level_policy, quiet
from swan_policy.deploy.manifest import (
    ACTION,
    BUDGET,
    BUNDLE_FORMAT,
    MANIFEST_NAME,
    MARGIN,
    META_PREFIX,
    level_file,
    sha256_file,
)
from swan_policy.export.graphs import (
    OPSET,
    DenseLevelGraph,
    ExportError,
    GatedPolicyGraph,
    PolicyGraph,
    export_graph,
)
from swan_policy.export.graphs import _padding_of as _padding_of
from swan_policy.policy import SwanPolicy
from swan_policy.spec import PIXELS, PROPRIO

__all__ = [
    "GATED_FILE",
    "LADDER_FILE",
    "OPSET",
    "PARITY_ATOL",
    "BundleReport",
    "DenseLevelGraph",
    "ExportError",
    "GatedPolicyGraph",
    "LevelReport",
    "PolicyGraph",
    "check_graph",
    "check_parity",
    "config_hash",
    "export_bundle",
    "export_graph",
    "parity_inputs",
    "quantize_level",
    "read_metadata",
    "set_int8_verdicts",
    "write_metadata",
]

PARITY_ATOL = 1e-4
GATED_FILE = "gated.onnx"
LADDER_FILE = "ladder.json"


# ---------------------------------------------------------------------- ONNX files
def write_metadata(path: Path, props: Mapping[str, str]) -> None:
    """Set ``metadata_props`` (keys prefixed ``swan.``) and the producer, in place."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    model.producer_name, model.producer_version = "swan-policy", __version__
    onnx.save(model, str(path), save_as_external_data=False)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``swan.*`` metadata of an ONNX file, prefix removed."""
    model = onnx.load(str(path), load_external_data=False)
    return {
        p.key[len(META_PREFIX) :]: p.value
        for p in model.metadata_props
        if p.key.startswith(META_PREFIX)
    }


def check_graph(path: Path) -> None:
    """``onnx.checker.check_model(full_check=True)`` or :class:`ExportError`."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{path.name}: onnx.checker rejected the graph: {e}") from None


def config_hash(config: Mapping[str, Any]) -> str:
    """SHA-256 of a config's canonical JSON (sorted keys): which training made the bundle."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------- parity
def parity_inputs(
    policy: SwanPolicy, real: Mapping[str, np.ndarray] | None = None, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Named observation batches for the parity check (batch 1 and 16).

    ``random``: uniform pixels, proprio drawn around the normalisation statistics;
    ``edge``: black/white/checkered images, proprio at +-5 standard deviations;
    ``real``: rows of the given observations (e.g. calibration rollouts).
    """
    rng = np.random.default_rng(seed)
    spec = policy.obs_spec.entries
    mean = policy.proprio_mean.cpu().numpy()
    std = policy.proprio_std.cpu().numpy()

    def make(n: int, kind: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if PIXELS in spec:
            shape = (n, *spec[PIXELS].shape)
            if kind == "random":
                out[PIXELS] = rng.integers(0, 256, shape, dtype=np.uint8)
            else:
                img = np.zeros(shape, dtype=np.uint8)
                img[1::3] = 255
                img[2::3, ::2, ::2] = 255
                out[PIXELS] = img
        dim = spec[PROPRIO].shape
        z = rng.standard_normal((n, *dim)) if kind == "random" else np.full((n, *dim), 5.0)
        if kind == "edge":
            z[1::2] *= -1.0
        out[PROPRIO] = (mean + z * std).astype(np.float32)
        return out

    sets = {f"{k}_{n}": make(n, k) for k in ("random", "edge") for n in (1, 16)}
    if real is not None:
        total = int(next(iter(real.values())).shape[0])
        for n in (1, 16):
            rows = np.linspace(0, total - 1, min(n, total)).round().astype(int)
            sets[f"real_{n}"] = {k: np.ascontiguousarray(real[k][rows]) for k in spec}
    return sets


def check_parity(
    module: nn.Module,
    path: Path,
    inputs: Mapping[str, Mapping[str, np.ndarray]],
    extra: Callable[[int], dict[str, np.ndarray]] | None = None,
    atol: float = PARITY_ATOL,
) -> dict[str, float]:
    """Max ``|torch - onnxruntime|`` of the first output per input set; asserted.

    Args:
        module: the exported wrapper (the torch reference).
        path: its ONNX file.
        inputs: named observation batches.
        extra: extra inputs by batch size (the gated graph's budget).
        atol: the tolerance.

    Raises:
        ExportError: a difference above ``atol`` (names the file and the input set).
    """
    from swan_policy.deploy.manifest import load_session

    sess = load_session(path)
    names: list[str] = list(module.input_names)  # type: ignore[arg-type]  # Module.__getattr__
    diffs: dict[str, float] = {}
    for label, obs in inputs.items():
        n = int(next(iter(obs.values())).shape[0])
        feed = {k: v for k, v in obs.items() if k in names}
        if extra is not None:
            feed.update(extra(n))
        with torch.no_grad():
            ref = module(*[torch.from_numpy(np.ascontiguousarray(feed[k])) for k in names])
        ref_np = (ref[0] if isinstance(ref, tuple) else ref).numpy()
        got = sess.run([ACTION], feed)[0]
        diff = float(np.abs(got - ref_np).max())
        diffs[label] = diff
        if not diff <= atol:
            raise ExportError(
                f"{path.name}: torch vs onnxruntime differ by {diff:.3g} > {atol:g} "
                f"on the {label!r} observations"
            )
    return diffs


# ---------------------------------------------------------------------- bundle
@dataclass
class LevelReport:
    """One exported level."""

    budget: float
    file: str
    units: dict[str, int]
    macs: int
    bytes: int
    parity: dict[str, float]
    int8: dict[str, Any] | None = None
    finetuned: dict[str, Any] | None = None  # what fine-tuned the level, if anything


@dataclass
class BundleReport:
    """What :func:`export_bundle` wrote."""

    path: Path
    levels: list[LevelReport]
    full_macs: int
    gates: str
    gated: dict[str, Any] | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


def export_bundle(
    policy: SwanPolicy,
    ladder: Ladder,
    out: str | Path,
    *,
    levels: Sequence[float] | None = None,
    gates: GateHandling = "folded",
    real_obs: Mapping[str, np.ndarray] | None = None,
    config: Mapping[str, Any] | None = None,
    gated: bool = False,
    int8: bool = False,
    overwrite: bool = False,
    atol: float = PARITY_ATOL,
    name: str | None = None,
    on_level: Callable[[LevelReport], None] | None = None,
    finetuned: Mapping[float, tuple[SwanPolicy, Mapping[str, Any]]] | None = None,
) -> BundleReport:
    """Export every ladder level (and optionally the gated model) into a bundle.

    Args:
        policy: the trained gated policy.
        ladder: its ladder (see :func:`swan_policy.budget.ladder.calibrate_ladder`).
        out: the bundle directory (must not exist unless ``overwrite``).
        levels: a subset of ``ladder.levels`` (default: all).
        gates: ``"folded"`` or ``"kept"`` (see :func:`level_policy`); ``"kept"`` graphs
            also output ``gate_margin``.
        real_obs: real observations ``{key: [N, ...]}`` for the parity check.
        config: the training config (its hash goes into the metadata).
        gated: also export ``gated.onnx`` (full model, budget input).
        int8: also write static-quantised int8 graphs (candidates: the caller decides
            from closed-loop success which to keep, see :func:`set_int8_verdicts`; until
            then the deploy runtime refuses ``precision="int8"`` on the bundle).
        overwrite: replace an existing bundle.
        atol: parity tolerance.
        name: bundle name (default: the directory name).
        on_level: called after each level is exported and verified.
        finetuned: ``{level: (model, info)}``: export ``model`` (the level fine-tuned,
            :mod:`swan_policy.train.finetune`; same units, folded gates) instead of
            the level as cut from ``policy``; ``info`` goes into the manifest entry.

    Raises:
        ExportError: verification failed; FileExistsError: ``out`` exists.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists (pass --overwrite to replace it)")
    chosen = tuple(ladder.levels if levels is None else levels)
    unknown = [b for b in chosen if b not in ladder.levels]
    if unknown:
        raise ValueError(f"levels {unknown} are not in the ladder's levels {list(ladder.levels)}")
    files: dict[str, float] = {}
    for b in chosen:  # one file per level: never let one level overwrite another's graph
        other = files.setdefault(level_file(b), b)
        if other != b:
            raise ValueError(
                f"levels {other!r} and {b!r} would both be written to {level_file(b)}; "
                "choose levels that differ in their first 6 significant digits"
            )
    finetuned = dict(finetuned or {})
    if finetuned and gates != "folded":
        raise ValueError(
            "fine-tuned levels are plain dense models: export them with gates='folded'"
        )
    policy = quiet(policy.eval())
    inputs = parity_inputs(policy, real_obs)
    spec = policy.obs_spec
    cfg = dict(config) if config is not None else policy.config.model_dump(mode="json")
    common = {
        "format": BUNDLE_FORMAT,
        "inputs": json.dumps([PIXELS, PROPRIO] if policy.encoder is not None else [PROPRIO]),
        "obs_spec": json.dumps(spec.to_json()),
        "action_low": json.dumps(policy.action_low.tolist()),
        "action_high": json.dumps(policy.action_high.tolist()),
        "version": __version__,
        "config_hash": config_hash(cfg),
        "gates": gates,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        reports: list[LevelReport] = []
        for b in sorted(chosen, reverse=True):
            level = level_policy(policy, ladder, b, gates=gates)
            tuned_info = None
            if b in finetuned:
                tuned, tuned_info = finetuned[b]
                if tuned.config != level.config:
                    raise ValueError(
                        f"fine-tuned level {b:g}: its architecture is not the level's "
                        f"({tuned.config} != {level.config})"
                    )
                level = quiet(tuned.eval())
            # folded levels export the fused dense graph; parity is checked against the
            # policy's own (unfused) forward either way
            reference = PolicyGraph(level, margin=gates == "kept")
            graph = DenseLevelGraph(level) if gates == "folded" else reference
            fname = level_file(b)
            example = [torch.from_numpy(inputs["random_1"][k]) for k in graph.input_names]
            export_graph(graph, example, tmp / fname)
            macs = graph_macs(level)
            units = ladder.units(b)
            write_metadata(
                tmp / fname,
                {
                    **common,
                    "level": repr(float(b)),
                    "macs": str(macs),
                    "units": json.dumps(units),
                    "outputs": json.dumps(graph.output_names),
                    "finetuned": json.dumps(tuned_info),
                },
            )
            check_graph(tmp / fname)
            parity = check_parity(reference, tmp / fname, inputs, atol=atol)
            rep = LevelReport(b, fname, units, macs, (tmp / fname).stat().st_size, parity, None)
            rep.finetuned = None if tuned_info is None else dict(tuned_info)
            if int8:
                rep.int8 = quantize_level(tmp / fname, tmp / level_file(b, ".int8"), inputs, graph)
            reports.append(rep)
            if on_level is not None:
                on_level(rep)
        gated_info = None
        if gated:
            gated_info = _export_gated(policy, tmp, inputs, common, atol)
        ladder.save(tmp / LADDER_FILE)
        manifest = {
            "format": BUNDLE_FORMAT,
            "name": name or out.name,
            "swan_policy_version": __version__,
            "opset": OPSET,
            "config_hash": common["config_hash"],
            "obs_spec": spec.to_json(),
            "inputs": json.loads(common["inputs"]),
            "outputs": [ACTION, MARGIN] if gates == "kept" else [ACTION],
            "action_low": policy.action_low.tolist(),
            "action_high": policy.action_high.tolist(),
            "gates": gates,
            "full_macs": graph_macs(policy),
            "dense_macs": policy.dense_macs(),
            "parity_atol": atol,
            "ladder": LADDER_FILE,
            "levels": [_level_entry(tmp, r) for r in reports],
            "gated": gated_info,
        }
        from swan_policy.serialization import save_json

        save_json(tmp / MANIFEST_NAME, manifest)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BundleReport(out, reports, graph_macs(policy), gates, gated_info, manifest)


def _level_entry(root: Path, r: LevelReport) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "budget": r.budget,
        "file": r.file,
        "sha256": sha256_file(root / r.file),
        "bytes": r.bytes,
        "macs": r.macs,
        "units": r.units,
        "parity_max_abs_diff": r.parity,
    }
    if r.int8 is not None:
        entry["int8"] = {**r.int8, "sha256": sha256_file(root / r.int8["file"])}
    if r.finetuned is not None:
        entry["finetuned"] = r.finetuned
    return entry


def _export_gated(
    policy: SwanPolicy,
    root: Path,
    inputs: Mapping[str, Mapping[str, np.ndarray]],
    common: Mapping[str, str],
    atol: float,
) -> dict[str, Any]:
    graph = GatedPolicyGraph(policy)
    example = [
        torch.from_numpy(inputs["random_1"][k]) for k in graph.input_names if k != BUDGET
    ] + [torch.ones(1)]
    export_graph(graph, example, root / GATED_FILE)
    write_metadata(
        root / GATED_FILE,
        {**common, "gates": "gated", "level": "input", "macs": str(graph_macs(policy))},
    )
    check_graph(root / GATED_FILE)
    parity: dict[str, float] = {}
    for b in (1.0, 0.5, 0.25):
        # torch reference: the policy's own masked forward (torch.topk) at budget b
        ref_module = _BudgetReference(policy, b, graph.input_names[:-1])
        diffs = check_parity(
            ref_module,
            root / GATED_FILE,
            inputs,
            extra=lambda n, b=b: {BUDGET: np.full(n, b, dtype=np.float32)},  # type: ignore[misc]  # b=b binds the loop value
            atol=atol,
        )
        parity.update({f"b={b:g}/{k}": v for k, v in diffs.items()})
    return {
        "file": GATED_FILE,
        "sha256": sha256_file(root / GATED_FILE),
        "macs": graph_macs(policy),
        "parity_max_abs_diff": parity,
    }


class _BudgetReference(nn.Module):
    """Torch reference for the gated graph: ``policy(obs, b, "masked")``, clipped."""

    def __init__(self, policy: SwanPolicy, budget: float, names: list[str]) -> None:
        super().__init__()
        self.policy, self.budget = policy, budget
        self.input_names = [*names, BUDGET]

    def forward(self, *inputs: Tensor) -> Tensor:
        obs = dict(zip(self.input_names[:-1], inputs[:-1], strict=True))
        p = self.policy
        a = p(obs, self.budget, mode="masked")
        return torch.minimum(torch.maximum(a, p.action_low), p.action_high)


# ---------------------------------------------------------------------- int8
def quantize_level(
    fp32: Path,
    dest: Path,
    inputs: Mapping[str, Mapping[str, np.ndarray]],
    graph: nn.Module,
) -> dict[str, Any]:
    """Static (QDQ, per-channel) int8 quantisation calibrated on the parity inputs.

    Returns the candidate's entry; its action difference to fp32 is reported, not
    asserted -- int8 is judged by closed-loop success (reference/anchors.md).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from swan_policy.deploy.manifest import load_session

    names: list[str] = list(graph.input_names)  # type: ignore[arg-type]  # Module.__getattr__
    calib = [inputs[k] for k in ("real_16", "random_16", "edge_16") if k in inputs]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(
                [{k: batch[k][i : i + 1] for k in names} for batch in calib for i in range(16)]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.rows, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs advice on the root logger
    try:
        quantize_static(
            str(fp32),
            str(dest),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    finally:
        root.setLevel(level)
    a, b = load_session(fp32), load_session(dest)
    diff = 0.0
    for batch in calib:
        feed = {k: batch[k] for k in names}
        diff = max(diff, float(np.abs(a.run([ACTION], feed)[0] - b.run([ACTION], feed)[0]).max()))
    return {"file": dest.name, "bytes": dest.stat().st_size, "max_abs_diff_vs_fp32": diff}


def set_int8_verdicts(bundle: Path, verdicts: Mapping[float, Mapping[str, Any]]) -> None:
    """Record closed-loop verdicts on the int8 candidates; delete the dropped files.

    Args:
        bundle: the bundle directory.
        verdicts: per level, ``{"kept": bool, "success": ..., "fp32_success": ...}``.
    """
    from swan_policy.serialization import load_json, save_json

    path = bundle / MANIFEST_NAME
    manifest = load_json(path)
    for entry in manifest["levels"]:
        info = entry.get("int8")
        verdict = verdicts.get(float(entry["budget"]))
        if info is None or verdict is None:
            continue
        info.update(verdict)
        if not verdict.get("kept"):
            (bundle / info["file"]).unlink(missing_ok=True)
    save_json(path, manifest)

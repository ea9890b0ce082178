"""The bundle's files: the ``bundle.json`` manifest, level file names, hashes, and
the checks that a bundle agrees with itself (manifest fields, graph inputs and output).

``swan export`` writes what this module reads; :class:`~swan_policy.deploy.runtime.PolicyRuntime`
calls :func:`read_manifest`, :func:`load_session` and :func:`check_graph` at load.
Imports the standard library, onnxruntime and :mod:`swan_policy.spec` only -- never torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnxruntime as ort

from swan_policy.spec import ObsSpec

BUNDLE_FORMAT = "swan-bundle/1"
MANIFEST_NAME = "bundle.json"
META_PREFIX = "swan."
ACTION = "action"
MARGIN = "gate_margin"
BUDGET = "budget"


class BundleError(ValueError):
    """A bundle is missing, malformed, corrupted or does not fit (message names the path)."""


def level_file(budget: float, suffix: str = "") -> str:
    """File name of a level's graph, e.g. ``level_0.50.onnx`` / ``level_0.50.int8.onnx``.

    A budget exact at 2 decimals keeps that name; any other gets an exact, longer one
    (``level_0.125.onnx``), so 0.125 and 0.12 never share a file.
    """
    name = f"{budget:.2f}"
    if float(name) != budget:
        name = f"{budget:.6g}"
    return f"level_{name}{suffix}.onnx"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Low-latency options: ``threads`` intra-op threads, sequential, full optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only
    return so


def load_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime CPU session, or :class:`BundleError` naming the file."""
    if not path.is_file():
        raise BundleError(f"{path}: file not found (expected an ONNX graph)")
    try:
        return ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as e:  # onnxruntime raises its own exception types per failure
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"{path}: onnxruntime cannot load this ONNX file ({first})") from None


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The bundle's ``bundle.json``, checked for the fields the runtime needs.

    Raises:
        BundleError: missing directory or manifest, bad JSON, wrong format or fields.
    """
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a bundle directory (expected {MANIFEST_NAME} inside)")
    if not path.is_file():
        raise BundleError(f"{path}: file not found (is {bundle} a bundle from `swan export`?)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{path}: expected format {BUNDLE_FORMAT!r}, got {got!r}")
    for key in ("obs_spec", "inputs", "action_low", "action_high", "levels"):
        if key not in data:
            raise BundleError(f"{path}: missing field {key!r}")
    if not isinstance(data["levels"], list) or not data["levels"]:
        raise BundleError(f"{path}: 'levels' must list at least one level")
    for i, lvl in enumerate(data["levels"]):
        if not isinstance(lvl, dict) or not {"budget", "file", "sha256"} <= set(lvl):
            raise BundleError(f"{path}: levels[{i}] needs 'budget', 'file' and 'sha256'")
    _check_manifest(path, data)
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_manifest(path: Path, data: Mapping[str, Any]) -> None:
    """The manifest's fields have the types and values the runtime relies on.

    Raises:
        BundleError: naming the manifest's path, the field, the rule and the value.
    """

    def bad(field: str, rule: str, value: Any) -> BundleError:
        return BundleError(f"{path}: {field}: {rule}, got {_short(value)}")

    spec = data["obs_spec"]
    if not isinstance(spec, dict) or not spec:
        raise bad("obs_spec", "expected a mapping of key -> {shape, dtype}", spec)
    for key, entry in spec.items():
        field = f"obs_spec[{key!r}]"
        if not isinstance(entry, dict) or not {"shape", "dtype"} <= set(entry):
            raise bad(field, "expected {'shape': [...], 'dtype': ...}", entry)
        shape, dtype = entry["shape"], entry["dtype"]
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
        ):
            raise bad(f"{field}.shape", "expected a list of integers >= 1", shape)
        if dtype != "uint8" and dtype != "float32":
            raise bad(f"{field}.dtype", "expected 'uint8' or 'float32'", dtype)
    inputs = data["inputs"]
    if (
        not isinstance(inputs, list)
        or not inputs
        or not all(isinstance(name, str) for name in inputs)
        or len(set(inputs)) != len(inputs)
    ):
        raise bad("inputs", "expected a list of distinct input names", inputs)
    if set(inputs) != set(spec):
        raise bad("inputs", f"must name the obs_spec keys {sorted(spec)}", inputs)
    bounds = []
    for field in ("action_low", "action_high"):
        value = data[field]
        if (
            not isinstance(value, list)
            or not value
            or not all(is_number(v) and math.isfinite(v) for v in value)
        ):
            raise bad(field, "expected a non-empty list of finite numbers", value)
        bounds.append(value)
    low, high = bounds
    if len(low) != len(high) or any(lo > hi for lo, hi in zip(low, high, strict=False)):
        raise bad("action_high", f"expected {len(low)} numbers >= action_low's", high)
    budgets: dict[float, int] = {}
    files: dict[str, int] = {}
    for i, lvl in enumerate(data["levels"]):
        b = lvl["budget"]
        if not is_number(b) or not 0.0 < b <= 1.0:
            raise bad(f"levels[{i}].budget", "expected a number in (0, 1]", b)
        if float(b) in budgets:
            raise bad(f"levels[{i}].budget", f"already the budget of levels[{budgets[b]}]", b)
        budgets[float(b)] = i
        graphs = [("", lvl)]
        if lvl.get("int8") is not None:
            int8 = lvl["int8"]
            if not isinstance(int8, dict) or not {"file", "sha256"} <= set(int8):
                raise bad(f"levels[{i}].int8", "expected {'file': ..., 'sha256': ...}", int8)
            if "kept" in int8 and not isinstance(int8["kept"], bool):
                raise bad(f"levels[{i}].int8.kept", "expected true or false", int8["kept"])
            graphs.append((".int8", int8))
        for sub, entry in graphs:
            for key in ("file", "sha256"):
                if not isinstance(entry[key], str) or not entry[key]:
                    raise bad(f"levels[{i}]{sub}.{key}", "expected a non-empty string", entry[key])
            name = entry["file"]
            if name in files:
                raise bad(
                    f"levels[{i}]{sub}.file", f"already the file of levels[{files[name]}]", name
                )
            files[name] = i


def check_graph(
    path: Path, sess: ort.InferenceSession, spec: ObsSpec, inputs: list[str], action_dim: int
) -> None:
    """The graph's inputs are the manifest's (names, dtypes, shapes after the batch axis)
    and it outputs the action: a bundle that disagrees with itself is refused at load,
    not by onnxruntime at the first step.

    Raises:
        BundleError: naming the file, the input and the manifest's field.
    """
    names = [i.name for i in sess.get_inputs()]
    if names != inputs:
        raise BundleError(f"{path}: graph inputs {names} differ from the manifest's {inputs}")
    for node in sess.get_inputs():
        entry = spec.entries[node.name]
        field = f"{MANIFEST_NAME} obs_spec[{node.name!r}]"
        fed = "tensor(uint8)" if entry.dtype == "uint8" else "tensor(float)"
        if node.type != fed:
            raise BundleError(
                f"{path}: graph input {node.name!r} is {node.type}, but {field} says "
                f"{entry.dtype} (fed as {fed})"
            )
        shape = list(node.shape)
        if len(shape) != 1 + len(entry.shape) or any(
            isinstance(got, int) and got != want
            for got, want in zip(shape[1:], entry.shape, strict=True)
        ):
            raise BundleError(
                f"{path}: graph input {node.name!r} has shape {shape}, but {field} says "
                f"{list(entry.shape)} (after the batch axis)"
            )
    outputs = {o.name: o for o in sess.get_outputs()}
    if ACTION not in outputs:
        raise BundleError(f"{path}: the graph has no {ACTION!r} output (has {list(outputs)})")
    shape = list(outputs[ACTION].shape)
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != action_dim):
        raise BundleError(
            f"{path}: graph output {ACTION!r} has shape {shape}, but {MANIFEST_NAME} "
            f"action_low has {action_dim} entries"
        )


def check_int8_judged(bundle: Path, manifest: Mapping[str, Any]) -> None:
    """Refuse int8 graphs without a closed-loop verdict (an interrupted export, or
    ``export_bundle(int8=True)`` without :func:`~swan_policy.export.onnx.set_int8_verdicts`):
    only closed-loop success says whether an int8 graph may replace its fp32 level."""
    unjudged = [
        f"{lvl['budget']:g}"
        for lvl in manifest["levels"]
        if lvl.get("int8") is not None and "kept" not in lvl["int8"]
    ]
    if unjudged:
        raise BundleError(
            f"{bundle / MANIFEST_NAME}: the int8 graphs of levels {', '.join(unjudged)} were "
            "never judged in closed loop (no 'kept' verdict); judge them with `swan export "
            "--int8 --eval-episodes N` (keeps an int8 graph only if its closed-loop success "
            "holds), or use precision fp32"
        )

"""A hand-made deploy bundle (no torch export): one tiny ONNX graph + bundle.json.

``action = clip(proprio @ weight, low, high)`` -- enough to exercise the runtime's
validation, its non-finite-action guard and memory without exporting a policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from swan_policy.deploy.manifest import BUNDLE_FORMAT, MANIFEST_NAME, level_file, sha256_file


def linear_bundle(out: Path, weight: np.ndarray, levels: tuple[float, ...] = (1.0,)) -> Path:
    """Write a bundle whose every level computes ``proprio @ weight`` (``[P, A]``)."""
    p, a = weight.shape
    out.mkdir(parents=True)
    entries = []
    for budget in levels:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["proprio", "weight"], ["action"])],
            "linear",
            [helper.make_tensor_value_info("proprio", TensorProto.FLOAT, ["batch", p])],
            [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", a])],
            [numpy_helper.from_array(weight.astype(np.float32), "weight")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        onnx.checker.check_model(model, full_check=True)
        path = out / level_file(budget)
        onnx.save(model, str(path))
        entries.append({"budget": budget, "file": path.name, "sha256": sha256_file(path)})
    manifest = {
        "format": BUNDLE_FORMAT,
        "obs_spec": {"proprio": {"shape": [p], "dtype": "float32"}},
        "inputs": ["proprio"],
        "action_low": [-1.0] * a,
        "action_high": [1.0] * a,
        "levels": entries,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    return out

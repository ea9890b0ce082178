"""ONNX export: parity for every level, graph checks, metadata round trip, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from swan_policy import __version__
from swan_policy.budget.ladder import calibrate_ladder, fold_all_gates, graph_macs, level_policy
from swan_policy.deploy import BundleError, PolicyRuntime
from swan_policy.export import onnx as onnx_export
from swan_policy.export.onnx import (
    BundleReport,
    DenseLevelGraph,
    ExportError,
    PolicyGraph,
    check_parity,
    config_hash,
    export_bundle,
    read_metadata,
    set_int8_verdicts,
)
from swan_policy.policy import SwanPolicy
from tests.conftest import random_obs, state_config, tiny_config


def _trained_like(cfg, seed: int) -> SwanPolicy:
    """A policy with non-trivial normalisation, bounds and gates that close sometimes."""
    torch.manual_seed(seed)
    policy = SwanPolicy(cfg).eval()
    dim, act = policy.proprio_dim, policy.action_dim
    policy.set_normalization(
        np.linspace(-1, 1, dim), np.linspace(0.5, 2, dim), -np.arange(1, act + 1), np.ones(act)
    )
    if policy.encoder is not None and policy.encoder.input_norm == "image":
        # the first gate reads the channel means, which image norm makes 0: its logits
        # are its bias, all tied at init; a trained policy has learned distinct ones
        first = policy.encoder.convs[0].gate_fc
        assert first is not None
        with torch.no_grad():
            first.bias.copy_(
                torch.linspace(-1.0, 1.0, first.bias.numel())[torch.randperm(first.bias.numel())]
            )
    return policy


def _export(tmp: Path, cfg, levels, **kwargs) -> tuple[SwanPolicy, dict, BundleReport]:
    policy = _trained_like(cfg, seed=0)
    real = {k: v.numpy() for k, v in random_obs(policy.config, 48, seed=5).items()}
    ladder = calibrate_ladder(policy, real, levels)
    report = export_bundle(policy, ladder, tmp / "bundle", real_obs=real, **kwargs)
    return policy, {"ladder": ladder, "real": real}, report


@pytest.fixture(scope="module")
def pixel_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pixels")
    return _export(tmp, tiny_config(), (1.0, 0.5), gates="folded", gated=True)


@pytest.fixture(scope="module")
def image_norm_bundle(tmp_path_factory):
    """Per-image standardised pixels: not foldable into the first conv, so in the graph."""
    tmp = tmp_path_factory.mktemp("image_norm")
    enc = {"channels": [8, 8], "strides": [2, 1], "input_norm": "image"}
    return _export(tmp, tiny_config(encoder=enc), (1.0, 0.5), gates="folded", gated=True)


@pytest.fixture(scope="module")
def state_bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("state")
    return _export(tmp, state_config(), (1.0, 0.25), gates="kept", int8=True)


@pytest.mark.parametrize("which", ["pixel_bundle", "image_norm_bundle", "state_bundle"])
def test_every_level_matches_torch_at_batch_1_and_16(which, request) -> None:
    policy, extra, report = request.getfixturevalue(which)
    runtime = PolicyRuntime.load(report.path)
    assert runtime.levels == extra["ladder"].levels
    gates = report.gates
    for lvl in report.levels:
        # recorded at export: every input set, all within the asserted tolerance
        assert {"random_1", "random_16", "edge_1", "edge_16", "real_1", "real_16"} <= set(
            lvl.parity
        )
        assert max(lvl.parity.values()) <= 1e-4
        # and checked again here, independently of the exporter's own check
        torch_level = level_policy(policy, extra["ladder"], lvl.budget, gates=gates)
        for n, seed in ((1, 11), (16, 12)):
            obs = random_obs(policy.config, n, seed=seed)
            with torch.no_grad():
                expected = torch_level(obs, 1.0).numpy()
            got = runtime.predict({k: v.numpy() for k, v in obs.items()}, lvl.budget)
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
            assert (got >= policy.action_low.numpy()).all()
            assert (got <= policy.action_high.numpy()).all()


def test_lower_levels_are_smaller_graphs(pixel_bundle) -> None:
    _, extra, report = pixel_bundle
    top, low = report.levels
    assert top.budget == 1.0 and low.budget == 0.5
    assert low.macs < top.macs <= report.full_macs
    assert low.bytes < top.bytes
    assert all(low.units[k] <= top.units[k] for k in top.units)


@pytest.mark.parametrize("which", ["pixel_bundle", "state_bundle"])
def test_graphs_are_checked_single_file_opset_18_dynamic_batch(which, request) -> None:
    policy, _, report = request.getfixturevalue(which)
    files = sorted(p.name for p in report.path.iterdir())
    expected = {"bundle.json", "ladder.json"} | {lvl.file for lvl in report.levels}
    assert expected <= set(files)
    assert not [f for f in files if f.endswith((".data", ".tmp"))]
    for lvl in report.levels:
        path = report.path / lvl.file
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
        for init in model.graph.initializer:
            assert init.data_location == onnx.TensorProto.DEFAULT  # weights inside the file
        names = [i.name for i in model.graph.input]
        assert names == (["pixels", "proprio"] if policy.encoder is not None else ["proprio"])
        for inp in model.graph.input:
            batch = inp.type.tensor_type.shape.dim[0]
            assert batch.dim_param and not batch.dim_value  # symbolic batch axis
        dtypes = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        assert dtypes["proprio"] == onnx.TensorProto.FLOAT
        if "pixels" in dtypes:
            assert dtypes["pixels"] == onnx.TensorProto.UINT8  # uint8 -> float in-graph


def test_metadata_round_trip(pixel_bundle) -> None:
    policy, extra, report = pixel_bundle
    manifest = json.loads((report.path / "bundle.json").read_text())
    assert manifest == json.loads(json.dumps(report.manifest))
    for lvl in report.levels:
        path = report.path / lvl.file
        meta = read_metadata(path)
        level_model = level_policy(policy, extra["ladder"], lvl.budget, gates="folded")
        assert json.loads(meta["obs_spec"]) == policy.obs_spec.to_json()
        assert json.loads(meta["inputs"]) == ["pixels", "proprio"]
        assert json.loads(meta["outputs"]) == ["action"]  # folded: no gates, no margin
        assert json.loads(meta["action_low"]) == policy.action_low.tolist()
        assert json.loads(meta["action_high"]) == policy.action_high.tolist()
        assert float(meta["level"]) == lvl.budget
        assert int(meta["macs"]) == graph_macs(level_model) == lvl.macs
        assert json.loads(meta["units"]) == extra["ladder"].units(lvl.budget)
        assert meta["version"] == __version__
        assert meta["config_hash"] == config_hash(policy.config.model_dump(mode="json"))
        assert meta["config_hash"] == manifest["config_hash"]
        # the torch-free side reads the same values through onnxruntime
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        custom = sess.get_modelmeta().custom_metadata_map
        assert {k[len("swan.") :]: v for k, v in custom.items()} == meta


def test_kept_gates_output_the_gate_margin(state_bundle) -> None:
    policy, extra, report = state_bundle
    obs = random_obs(policy.config, 4, seed=9)
    level_model = level_policy(policy, extra["ladder"], 0.25, gates="kept")
    with torch.no_grad():
        level_model(obs, 1.0)
        expected = torch.stack(
            [g.last_logits.abs().mean(1) for g in level_model.gates().values()]
        ).mean(0)
    sess = ort.InferenceSession(str(report.path / "level_0.25.onnx"))
    _, margin = sess.run(None, {k: v.numpy() for k, v in obs.items()})
    np.testing.assert_allclose(margin, expected.numpy(), atol=1e-5)


@pytest.mark.parametrize("which", ["pixel_bundle", "image_norm_bundle"])
def test_gated_graph_takes_the_budget_as_input(which, request) -> None:
    policy, _, report = request.getfixturevalue(which)
    assert report.gated is not None and max(report.gated["parity_max_abs_diff"].values()) <= 1e-4
    sess = ort.InferenceSession(str(report.path / "gated.onnx"))
    assert [i.name for i in sess.get_inputs()] == ["pixels", "proprio", "budget"]
    obs = random_obs(policy.config, 16, seed=21)
    feed = {k: v.numpy() for k, v in obs.items()}
    outs = {}
    for b in (1.0, 0.5, 0.25):
        got = sess.run(None, {**feed, "budget": np.full(16, b, np.float32)})[0]
        with torch.no_grad():
            expected = policy(obs, b, mode="masked").numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        outs[b] = got
    assert not np.allclose(outs[1.0], outs[0.25])  # the budget input is used


def test_parity_failure_is_an_error(pixel_bundle, tmp_path) -> None:
    policy, extra, report = pixel_bundle

    class Off(PolicyGraph):
        def forward(self, *inputs):
            return super().forward(*inputs) + 1e-3

    graph = Off(level_policy(policy, extra["ladder"], 1.0), margin=False)
    inputs = onnx_export.parity_inputs(policy)
    with pytest.raises(ExportError, match=r"level_1.00.onnx: torch vs onnxruntime differ by"):
        check_parity(graph, report.path / "level_1.00.onnx", inputs)


def test_failed_export_leaves_nothing_and_refuses_to_overwrite(
    pixel_bundle, tmp_path, monkeypatch
) -> None:
    policy, extra, report = pixel_bundle
    with pytest.raises(FileExistsError, match="exists"):
        export_bundle(policy, extra["ladder"], report.path)

    def reject(path: Path) -> None:
        raise ExportError(f"{path.name}: onnx.checker rejected the graph: test")

    monkeypatch.setattr(onnx_export, "check_graph", reject)
    out = tmp_path / "never"
    with pytest.raises(ExportError, match="rejected"):
        export_bundle(policy, extra["ladder"], out, levels=(0.5,))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp directory left behind
    with pytest.raises(ValueError, match="not in the ladder"):
        export_bundle(policy, extra["ladder"], out, levels=(0.3,))


def test_int8_candidates_and_verdicts(state_bundle) -> None:
    policy, _, report = state_bundle
    for lvl in report.levels:
        assert lvl.int8 is not None and (report.path / lvl.int8["file"]).is_file()
    obs = {k: v.numpy() for k, v in random_obs(policy.config, 1, seed=3).items()}
    one = {k: v[0] for k, v in obs.items()}
    fp32 = PolicyRuntime.load(report.path, scheduler="fixed:0.25")
    # candidates never judged in closed loop are not run as if kept
    with pytest.raises(BundleError, match="were never judged in closed loop"):
        PolicyRuntime.load(report.path, scheduler="fixed:0.25", precision="int8")
    set_int8_verdicts(report.path, {b: {"kept": True} for b in (1.0, 0.25)})
    int8 = PolicyRuntime.load(report.path, scheduler="fixed:0.25", precision="int8")
    assert int8.act(one).shape == fp32.act(one).shape
    set_int8_verdicts(report.path, {0.25: {"kept": False, "success_rate": 0.0}})
    assert not (report.path / "level_0.25.int8.onnx").exists()
    # the dropped level falls back to fp32
    again = PolicyRuntime.load(report.path, scheduler="fixed:0.25", precision="int8")
    np.testing.assert_array_equal(again.act(one), fp32.act(one))


@pytest.mark.parametrize(
    ("low", "high"), [((-1.0, -1.0), (1.0, 1.0)), ((-2.0, -2.0), (3.0, 3.0)), ((-2, 0), (1, 5))]
)
@pytest.mark.parametrize(
    "cfg",
    [
        tiny_config,
        state_config,
        lambda: tiny_config(encoder={"channels": [8, 8], "strides": [2, 1], "input_norm": "image"}),
    ],
)
def test_fused_dense_graph_equals_the_policy(cfg, low, high) -> None:
    """The folded normalisation and action affine are the same function (torch side)."""
    torch.manual_seed(1)
    policy = fold_all_gates(SwanPolicy(cfg()).eval())
    dim, act = policy.proprio_dim, policy.action_dim
    policy.set_normalization(
        np.linspace(-1, 1, dim), np.linspace(0.5, 2, dim), np.array(low[:act]), np.array(high[:act])
    )
    obs = random_obs(policy.config, 8, seed=2)
    names = ["pixels", "proprio"] if policy.encoder is not None else ["proprio"]
    with torch.no_grad():
        fused = DenseLevelGraph(policy)(*[obs[k] for k in names])
        reference = PolicyGraph(policy)(*[obs[k] for k in names])
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=0)


def test_margin_signal_runs_on_a_kept_bundle(state_bundle) -> None:
    """Graphs exported with gates kept output gate_margin: the margin signal is fed."""
    policy, _, report = state_bundle
    spec = {"kind": "adaptive", "target": 0.5, "signal": "margin"}
    runtime = PolicyRuntime.load(report.path, scheduler=spec)
    obs = {k: v.numpy()[0] for k, v in random_obs(policy.config, 1, seed=4).items()}
    runtime.act(obs)
    assert runtime._margin is not None and runtime._margin >= 0.0


def test_levels_that_round_alike_get_their_own_graphs(tmp_path) -> None:
    """0.125 and 0.12 both used to be written to level_0.12.onnx, one overwriting the
    other; each level now has its own file and runs its own graph."""
    policy, extra, report = _export(tmp_path, state_config(), (1.0, 0.125, 0.12))
    assert [lvl.file for lvl in report.levels] == [
        "level_1.00.onnx",
        "level_0.125.onnx",
        "level_0.12.onnx",
    ]
    runtime = PolicyRuntime.load(report.path)
    assert runtime.levels == (1.0, 0.125, 0.12)
    obs = random_obs(policy.config, 16, seed=8)
    for b in (0.125, 0.12):
        with torch.no_grad():
            expected = level_policy(policy, extra["ladder"], b, gates="folded")(obs, 1.0).numpy()
        got = runtime.predict({k: v.numpy() for k, v in obs.items()}, b)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_levels_whose_file_names_collide_are_refused(tmp_path) -> None:
    policy = _trained_like(state_config(), seed=0)
    real = {k: v.numpy() for k, v in random_obs(policy.config, 48, seed=5).items()}
    ladder = calibrate_ladder(policy, real, (1.0, 0.12, 0.1200000001))
    out = tmp_path / "bundle"
    message = r"levels 0\.1200000001 and 0\.12 would both be written to level_0\.12\.onnx"
    with pytest.raises(ValueError, match=message):
        export_bundle(policy, ladder, out, real_obs=real)
    assert list(tmp_path.iterdir()) == []

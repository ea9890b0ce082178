"""Hostile, damaged and ill-fitting files (RELIABILITY.md rows 1, 2, 3 and 5).

Every load path is fed a pickle whose ``__reduce__`` would create a marker file; the
tests first prove the payload really does create it when unpickled, so "the marker
is absent" means the loader never unpickled, not that the payload was inert.
"""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import random
import re
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from swan_policy.budget.ladder import Ladder
from swan_policy.cli import main
from swan_policy.config import PolicyConfig
from swan_policy.data.demos import DemoFileError, load_demos
from swan_policy.deploy.runtime import BundleError, PolicyRuntime, sha256_file
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import CheckpointError, load_tensors, save_tensors
from swan_policy.train.checkpoint import (
    TrainerState,
    load_checkpoint,
    save_checkpoint,
)
from tests.conftest import random_obs, state_config, tiny_config
from tests.reliability._runs import REPO, tiny_train, tree_digest


class Payload:
    """Unpickling it calls ``open(marker, "w")``: the marker file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def pickle_bytes(marker: Path, kind: str) -> bytes:
    """A hostile file: a raw pickle, or torch.save's zip format (what a ``.pt`` is)."""
    if kind == "pickle":
        return pickle.dumps(Payload(marker), protocol=pickle.HIGHEST_PROTOCOL)
    buf = io.BytesIO()
    torch.save({"state_dict": Payload(marker)}, buf)
    return buf.getvalue()


@pytest.fixture(params=["pickle", "torch.save"])
def hostile(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[bytes, Path]:
    """``(file bytes, marker)``, with the payload proven live before use."""
    marker = tmp_path / "pwned"
    data = pickle_bytes(marker, request.param)
    if request.param == "pickle":
        pickle.loads(data)  # noqa: S301  (the point: prove the payload works)
    else:
        torch.load(io.BytesIO(data), weights_only=False)  # noqa: S614  (same)
    assert marker.exists()
    marker.unlink()
    return data, marker


def _policy(seed: int = 0) -> SwanPolicy:
    torch.manual_seed(seed)
    return SwanPolicy(tiny_config()).eval()


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


# --------------------------------------------------------------------------- row 1
@pytest.mark.parametrize("name", ["weights.pt", "model.zip", "model.safetensors"])
def test_row1_pickle_under_any_weights_name_is_refused(
    hostile: tuple[bytes, Path], tmp_path: Path, name: str
) -> None:
    """Row 1: load_tensors names the path and the expected format; never unpickles."""
    data, marker = hostile
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(
        CheckpointError,
        match=re.escape(str(path)) + r": not a valid safetensors file .*never pickle",
    ):
        load_tensors(path)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["model.safetensors", "config.json"])
def test_row1_pickle_inside_a_policy_directory(
    hostile: tuple[bytes, Path], tmp_path: Path, target: str
) -> None:
    """Row 1: from_pretrained refuses a pickle as weights or as config."""
    data, marker = hostile
    d = _policy().save_pretrained(tmp_path / "p")
    (d / target).write_bytes(data)
    expected = "not valid JSON" if target == "config.json" else "not a valid safetensors file"
    with pytest.raises(CheckpointError, match=re.escape(str(d / target)) + ": " + expected):
        SwanPolicy.from_pretrained(d)
    assert not marker.exists()


def test_row1_pickle_in_a_run_through_the_cli(
    hostile: tuple[bytes, Path], run_copy: Path, demos16: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Row 1: `swan train --resume` and `swan eval` on a run whose files are pickles:
    one `error:` line naming the file, exit 2, no code ran, nothing else touched."""
    data, marker = hostile
    last = run_copy / "checkpoints" / "step_6"
    (last / "optimizer.safetensors").write_bytes(data)
    before = tree_digest(run_copy)
    argv = [*tiny_train(demos16, "bc.steps=8"), "--run-dir", str(run_copy), "--resume", "--quiet"]
    assert main(argv) == 2
    assert re.search(r"optimizer\.safetensors: not a valid safetensors", _one_line_error(capsys))
    evil = run_copy / "evil.pt"
    evil.write_bytes(data)
    (run_copy / "checkpoints" / "step_4" / "model.safetensors").write_bytes(data)
    for which, message in [
        (str(evil), "evil.pt: expected a policy directory with model.safetensors"),
        (str(run_copy / "checkpoints" / "step_4"), r"step_4/model\.safetensors: not a valid"),
    ]:
        assert main(["eval", "--run", str(run_copy), "--checkpoint", which, "--workers", "1"]) == 2
        assert re.search(message, _one_line_error(capsys))
    assert not marker.exists()
    after = tree_digest(run_copy)
    del after["evil.pt"], after["checkpoints/step_4/model.safetensors"]
    del before["checkpoints/step_4/model.safetensors"]
    assert after == before  # the failed resume and evals wrote nothing


def test_row1_pickle_as_demos_ladder_and_bundle(
    hostile: tuple[bytes, Path], tmp_path: Path
) -> None:
    """Row 1: HDF5 demos, ladder JSON, bundle manifest and ONNX graph -- none unpickles."""
    data, marker = hostile
    demos = tmp_path / "demos.hdf5"
    demos.write_bytes(data)
    with pytest.raises(DemoFileError, match=re.escape(str(demos)) + ": not a readable HDF5"):
        load_demos(demos)
    ladder = tmp_path / "ladder.json"
    ladder.write_bytes(data)
    with pytest.raises(CheckpointError, match=re.escape(str(ladder)) + ": not a JSON ladder"):
        Ladder.load(ladder)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_bytes(data)
    with pytest.raises(BundleError, match=r"bundle\.json: not valid JSON"):
        PolicyRuntime.load(bundle)
    # a manifest that vouches for the pickle (right SHA-256): onnxruntime parses it, and
    # refuses it as a model -- it has no unpickler
    graph = bundle / "level_1.00.onnx"
    graph.write_bytes(data)
    manifest = {
        "format": "swan-bundle/1",
        "obs_spec": {"proprio": {"shape": [4], "dtype": "float32"}},
        "inputs": ["proprio"],
        "action_low": [-1.0],
        "action_high": [1.0],
        "levels": [{"budget": 1.0, "file": graph.name, "sha256": sha256_file(graph)}],
    }
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"level_1\.00\.onnx: onnxruntime cannot load"):
        PolicyRuntime.load(bundle)
    assert not marker.exists()


# Calls that unpickle (or may), refused in every module of the package. A use that is
# not a file load path goes in ALLOWED with the reason.
UNPICKLING_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cloudpickle.load",
    "cloudpickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "torch.load",
    "yaml.load",
    "yaml.unsafe_load",
    "yaml.full_load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "PPO.load",
    "SAC.load",
    "BaseAlgorithm.load",
    "load_from_zip_file",
}
ALLOWED: dict[tuple[str, str], str] = {}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unpickling_calls(source: str, filename: str = "<snippet>") -> list[str]:
    """``line: call`` for every call in ``source`` that unpickles (or may)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        hit = name in UNPICKLING_CALLS or name.rsplit(".", 1)[-1] in {
            "load_from_zip_file",
            "read_pickle",
        }
        for kw in node.keywords:
            value = kw.value.value if isinstance(kw.value, ast.Constant) else None
            hit |= kw.arg == "weights_only" and value is False
            hit |= kw.arg == "allow_pickle" and value is True
            hit |= kw.arg == "Loader" and _dotted(kw.value).endswith(
                ("yaml.Loader", "UnsafeLoader", "FullLoader")
            )
        if hit and (filename, name) not in ALLOWED:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_row1_the_scan_finds_unpickling_calls() -> None:
    """Row 1: the scanner below is not vacuous -- each of these is flagged."""
    bad = [
        "pickle.loads(b)",
        "torch.load(p, weights_only=False)",
        "torch.load(p)",
        "np.load(p, allow_pickle=True)",
        "yaml.load(t, Loader=yaml.Loader)",
        "yaml.unsafe_load(t)",
        "PPO.load(path)",
        "x.load_from_zip_file(p)",
    ]
    for snippet in bad:
        assert len(unpickling_calls(snippet)) == 1, snippet
    assert unpickling_calls("yaml.safe_load(t); json.loads(t); np.load(p)") == []


def test_row1_no_unpickling_call_in_the_package() -> None:
    """Row 1: no pickle/torch.load/unsafe YAML, no weights_only=False, no np.load with
    allow_pickle=True anywhere in swan_policy/ or envs/ (the load paths live there)."""
    files = sorted((REPO / "swan_policy").rglob("*.py")) + sorted((REPO / "envs").rglob("*.py"))
    assert len(files) > 20
    found = []
    for path in files:
        found += unpickling_calls(path.read_text(), str(path.relative_to(REPO)))
    assert found == []


# --------------------------------------------------------------------------- row 2
def _numpy_key() -> np.ndarray:
    state = np.random.get_state()
    assert isinstance(state, tuple)
    return np.array(state[1])


def test_row2_corrupted_weights_are_refused_and_nothing_changes(tmp_path: Path) -> None:
    """Row 2: a flipped byte in the tensor data (not just a truncation) is caught by the
    checksum save_tensors records; a failed load leaves global state as it was."""
    policy = _policy()
    opt = torch.optim.AdamW(policy.parameters(), 1e-3)
    ckpt = save_checkpoint(tmp_path, policy, opt, TrainerState(step=1))
    for name in ("model.safetensors", "optimizer.safetensors"):
        path = ckpt / name
        good = path.read_bytes()
        bad = bytearray(good)
        bad[-5] ^= 0x01  # one bit of the last tensor's data
        path.write_bytes(bytes(bad))
        rng = (torch.get_rng_state(), _numpy_key(), random.getstate())
        with pytest.raises(
            CheckpointError,
            match=re.escape(str(path)) + ": tensor data does not match the SHA-256",
        ):
            load_checkpoint(ckpt)
        assert torch.equal(torch.get_rng_state(), rng[0])
        assert np.array_equal(_numpy_key(), rng[1]) and random.getstate() == rng[2]
        path.write_bytes(good[: len(good) - 7])  # truncated
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": not a valid"):
            load_checkpoint(ckpt)
        path.write_bytes(good)
    assert load_checkpoint(ckpt).state.step == 1  # undamaged again: loads


def test_row2_files_from_other_tools_load_without_a_checksum(tmp_path: Path) -> None:
    """Row 2: the checksum is ours; a plain safetensors file (e.g. from the HF hub
    tooling) still loads."""
    from safetensors.torch import save_file

    save_file({"w": torch.arange(4.0)}, str(tmp_path / "plain.safetensors"))
    assert torch.equal(load_tensors(tmp_path / "plain.safetensors")["w"], torch.arange(4.0))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncate-model", r"step_6/model\.safetensors: not a valid safetensors file"),
        ("flip-model", r"step_6/model\.safetensors: tensor data does not match"),
        ("config-json", r"step_6/config\.json: not valid JSON"),
        ("trainer-state", r"step_6: trainer state does not fit"),
        ("pointer-garbage", r"checkpoints/last: expected a checkpoint name like 'step_100'"),
        ("pointer-escape", r"checkpoints/last: expected a checkpoint name .*got '\.\./\.\./x'"),
        ("pointer-missing-dir", r"checkpoints/last: points to step_8, which is incomplete"),
    ],
)
def test_row2_resume_from_a_damaged_run_is_one_line_and_changes_nothing(
    run_copy: Path,
    demos16: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    message: str,
) -> None:
    """Row 2: `swan train --resume` on a damaged last checkpoint: one `error:` line with
    the path, exit 2, and every file of the run exactly as before (nothing lost)."""
    ckpts = run_copy / "checkpoints"
    model = ckpts / "step_6" / "model.safetensors"
    if damage == "truncate-model":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "flip-model":
        data = bytearray(model.read_bytes())
        data[-3] ^= 0x10
        model.write_bytes(bytes(data))
    elif damage == "config-json":
        (ckpts / "step_6" / "config.json").write_text('{"policy": ')
    elif damage == "trainer-state":
        (ckpts / "step_6" / "trainer_state.json").write_text('{"step": 6}')
    elif damage == "pointer-garbage":
        (ckpts / "last").write_bytes(b"\x00\xff garbage")
    elif damage == "pointer-escape":  # nothing outside checkpoints/ is ever loaded
        (ckpts / "last").write_text("../../x\n")
    else:
        (ckpts / "last").write_text("step_8\n")
    before = tree_digest(run_copy)
    argv = [*tiny_train(demos16, "bc.steps=8"), "--run-dir", str(run_copy), "--resume", "--quiet"]
    assert main(argv) == 2
    assert re.search(message, _one_line_error(capsys))
    assert tree_digest(run_copy) == before


# --------------------------------------------------------------------------- row 3
def test_row3_dtype_and_architecture_mismatch_list_the_keys(tmp_path: Path) -> None:
    """Row 3: float64 weights and a config that does not match the weights both fail
    the strict load, naming every offending key (never a partial load)."""
    d = _policy().save_pretrained(tmp_path / "p")
    state = load_tensors(d / "model.safetensors")
    bias64 = state["head.out.bias"].double()
    save_tensors(d / "model.safetensors", {**state, "head.out.bias": bias64})
    with pytest.raises(
        CheckpointError,
        match=r"model\.safetensors: weights do not fit the config; wrong dtypes: "
        r"head\.out\.bias \(expected torch\.float32, got torch\.float64\)",
    ):
        SwanPolicy.from_pretrained(d)
    save_tensors(d / "model.safetensors", state)
    meta = json.loads((d / "config.json").read_text())
    meta["policy"]["head"]["hidden"] = [16, 16, 16]  # one more layer than the weights hold
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"missing keys: head\.layers\.2\.") as err:
        SwanPolicy.from_pretrained(d)
    assert "unexpected keys" not in str(err.value) and "head.layers.2.linear.weight" in str(
        err.value
    )


# --------------------------------------------------------------------------- row 5
@pytest.mark.parametrize("make", [tiny_config, state_config], ids=["pixels", "proprio"])
def test_row5_round_trip_is_bit_exact_and_resaving_is_byte_identical(
    tmp_path: Path, make: Callable[[], PolicyConfig]
) -> None:
    """Row 5: parameters and buffers bit-identical, same action, config equal; saving
    the loaded policy again writes byte-identical files (a deterministic format), and
    files get the user's usual permissions (not mkstemp's 0600)."""
    torch.manual_seed(3)
    policy = SwanPolicy(make()).eval()
    dim, act = policy.proprio_dim, policy.action_dim
    policy.set_normalization(
        np.linspace(-1, 1, dim), np.linspace(0.5, 2, dim), -2 * np.ones(act), np.ones(act)
    )
    a = policy.save_pretrained(tmp_path / "a")
    loaded = SwanPolicy.from_pretrained(a).eval()
    assert loaded.config == policy.config
    sd, sd2 = policy.state_dict(), loaded.state_dict()
    assert list(sd) == list(sd2)
    assert all(torch.equal(sd[k], sd2[k]) and sd[k].dtype == sd2[k].dtype for k in sd)
    obs = {k: v[0].numpy() for k, v in random_obs(policy.config, 1, seed=4).items()}
    for budget in (1.0, 0.5):
        np.testing.assert_array_equal(policy.act(obs, budget), loaded.act(obs, budget))
    b = loaded.save_pretrained(tmp_path / "b")
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    # safetensors orders header metadata by a Rust HashMap: compare parsed, then the data
    heads = []
    for d in (a, b):
        blob = (d / "model.safetensors").read_bytes()
        n = int.from_bytes(blob[:8], "little")
        heads.append((json.loads(blob[8 : 8 + n]), blob[8 + n :]))
    assert heads[0] == heads[1]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((a / name).stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in a.iterdir()) == ["config.json", "model.safetensors"]

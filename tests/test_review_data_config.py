"""Review fixes: config YAML oddities, hostile JSON/safetensors, demo-file and CLI edge cases."""

from __future__ import annotations

import json
import os
import signal
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from swan_policy.cli import main
from swan_policy.config import ConfigError, dump_config, load_config
from swan_policy.data.augment import random_colour_mix
from swan_policy.data.demos import DemoFileError, collect_demos, load_demos, validate_demo_file
from swan_policy.serialization import CheckpointError, load_json, load_tensors

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "reach_bc.yaml")
BASE = "policy: {proprio_dim: 3, action_dim: 2}\n"
SMALL = {"width": 32, "height": 32}


def _config(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


# ---- config: YAML 1.1 oddities -----------------------------------------------------------------


def test_exponent_floats_without_a_dot_are_floats(tmp_path: Path) -> None:
    # YAML 1.1 (PyYAML) reads 3e-4 as the *string* "3e-4": SB3 got text as a learning rate
    text = BASE + "rl: {hyperparams: {learning_rate: 3e-4, ent_coef: 1.5E-2}}\nbc: {steps: 1e4}\n"
    cfg = load_config(_config(tmp_path, text), ["rl.hyperparams.gamma=9.9e-1", "bc.lr=1e-3"])
    hp = cfg.rl.hyperparams
    assert hp == {"learning_rate": 3e-4, "ent_coef": 1.5e-2, "gamma": 0.99}
    assert all(type(v) is float for v in hp.values())
    assert cfg.bc.steps == 10_000 and cfg.bc.lr == 1e-3
    assert load_config(_config(tmp_path, dump_config(cfg))) == cfg


def test_text_that_looks_like_an_exponent_float_round_trips_through_a_run_config(
    tmp_path: Path,
) -> None:
    # a run's config.yaml is read back by swan eval / compact / export
    cfg = load_config(_config(tmp_path, BASE + "name: '1e3'\nenv: {kwargs: {tag: '2E-5'}}\n"))
    assert cfg.name == "1e3" and cfg.env.kwargs == {"tag": "2E-5"}
    assert load_config(_config(tmp_path, dump_config(cfg))) == cfg


def test_a_key_given_twice_is_an_error_not_silently_dropped(tmp_path: Path) -> None:
    text = BASE + "bc: {steps: 5}\ndagger: {rounds: 1}\nbc: {lr: 0.1}\n"
    with pytest.raises(ConfigError, match=r"c\.yaml: invalid YAML: duplicate key 'bc' \(line 4"):
        load_config(_config(tmp_path, text))
    # a merge key's values may still be overridden by an explicit key
    cfg = load_config(_config(tmp_path, BASE + "env: {kwargs: {<<: {a: 1, b: 2}, a: 3}}\n"))
    assert cfg.env.kwargs == {"a": 3, "b": 2}


def test_date_like_values_stay_strings(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, BASE), ["name=2024-05-01", "env.kwargs.tag=2024-13-45"])
    assert cfg.name == "2024-05-01" and cfg.env.kwargs == {"tag": "2024-13-45"}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x80\x81\xfe\xff binary", r"c\.yaml: not a YAML text file"),
        (b"false\n", r"expected a mapping"),
        (b"0\n", r"expected a mapping"),
        (b"seed: " + b"7" * 5000 + b"\n", r"c\.yaml: invalid YAML: .*digits"),
        (b"[" * 50_000, r"c\.yaml: invalid YAML"),
    ],
)
def test_unreadable_or_odd_config_files_are_config_errors(
    tmp_path: Path, content: bytes, match: str
) -> None:
    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


@pytest.mark.parametrize("value", ["no", "on", "2024"])
def test_a_text_field_given_a_yaml_bool_or_number_says_to_quote_it(
    tmp_path: Path, value: str
) -> None:
    with pytest.raises(
        ConfigError, match=r"^name: Input should be a valid string .*quote the text"
    ):
        load_config(_config(tmp_path, BASE), [f"name={value}"])
    assert load_config(_config(tmp_path, BASE), [f"name='{value}'"]).name == value


def test_override_values_python_cannot_build_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^override seed: cannot parse value"):
        load_config(_config(tmp_path, BASE), ["seed=" + "7" * 5000])


def test_seed_beyond_numpy_seeding_is_refused(tmp_path: Path) -> None:
    # np.random.seed (and SB3's set_random_seed) raise on seeds >= 2**32 once training starts
    with pytest.raises(ConfigError, match=r"^seed: Input should be less than 4294967296"):
        load_config(_config(tmp_path, BASE), [f"seed={2**32}"])


# ---- hostile JSON and safetensors -----------------------------------------------------------


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"step": ' + "9" * 5000 + "}"])
def test_hostile_json_is_a_checkpoint_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "trainer_state.json"
    p.write_text(text)
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: not valid JSON"):
        load_json(p)


def test_safetensors_with_a_dtype_torch_cannot_hold_is_a_checkpoint_error(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    p = tmp_path / "model.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\x7f" * 4)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a valid safetensors"):
        load_tensors(p)


# ---- demo files -----------------------------------------------------------------------------


def _demo_file(path: Path, env_args: object = None) -> Path:
    with h5py.File(path, "w") as f:
        demo = f.create_group("data/demo_0")
        demo.create_dataset("obs/pixels", data=np.zeros((3, 8, 8, 3), np.uint8))
        demo.create_dataset("obs/proprio", data=np.zeros((3, 4), np.float32))
        demo.create_dataset("actions", data=np.zeros((3, 2), np.float32))
        demo.create_dataset("rewards", data=np.zeros(3, np.float32))
        demo.create_dataset("dones", data=np.array([0, 0, 1], np.uint8))
        if env_args is not None:
            f["data"].attrs["env_args"] = json.dumps(env_args)
    return path


def test_scalar_nan_dataset_is_a_demo_file_error(tmp_path: Path) -> None:
    path = _demo_file(tmp_path / "scalar.hdf5")
    with h5py.File(path, "a") as f:
        del f["data/demo_0/rewards"]
        f["data/demo_0/rewards"] = np.float32(np.nan)
    with pytest.raises(DemoFileError, match=r"scalar\.hdf5: data/demo_0/rewards holds NaN"):
        validate_demo_file(path)


@pytest.mark.parametrize("shape", [(3, 3, 84, 84), (3, 1, 48, 48), (3, 3, 96, 96)])
def test_channels_first_images_are_refused_even_when_the_sizes_divide_by_3(
    tmp_path: Path, shape: tuple[int, ...]
) -> None:
    path = _demo_file(tmp_path / "chw.hdf5")
    with h5py.File(path, "a") as f:
        del f["data/demo_0/obs/pixels"]
        f["data/demo_0/obs/pixels"] = np.zeros(shape, np.uint8)
    with pytest.raises(DemoFileError, match=r"obs/pixels has shape .*channels last"):
        validate_demo_file(path)


@pytest.mark.parametrize(
    ("env_args", "match"),
    [
        ({"env_name": "x", "env_kwargs": "variation=hard"}, r"env_kwargs must be an object"),
        ({"env_name": "x", "env_kwargs": [1, 2]}, r"env_kwargs must be an object"),
        ({"env_name": 3, "env_kwargs": {}}, r"env_name must be a string"),
    ],
)
def test_env_args_of_the_wrong_shape_are_refused(
    tmp_path: Path, env_args: dict[str, object], match: str
) -> None:
    # training compares env_name / env_kwargs with its own env: dict("variation=hard") crashed
    path = _demo_file(tmp_path / "meta.hdf5", env_args)
    with pytest.raises(DemoFileError, match=rf"meta\.hdf5: data attribute env_args: {match}"):
        load_demos(path)
    robomimic = {"env_name": "Lift", "type": 1, "env_kwargs": {"has_renderer": False}}
    assert load_demos(_demo_file(tmp_path / "ok.hdf5", robomimic)).env_args == robomimic


def test_one_worker_env_failure_is_a_runtime_error_with_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"could not be made:\n") as err:
        collect_demos(
            "swan_envs/Reach-v0", 1, tmp_path / "x.hdf5", env_kwargs={"bogus": 1}, progress=False
        )
    assert "Traceback" in str(err.value) and "bogus" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_worker_killed_between_episodes_is_reported_as_dead(tmp_path: Path) -> None:
    from swan_policy.data.demos import _ProcessWorkers

    pool = _ProcessWorkers("swan_envs/Reach-v0", SMALL, None, 0, workers=2)
    try:
        victim = pool.processes[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        with pytest.raises(RuntimeError, match=r"demo worker 0 \(pid \d+\) died \(exit code -9\)"):
            pool.submit(0)  # the next index goes to the least busy worker: the dead one
    finally:
        pool.close(abort=True)


def test_colour_mix_refuses_non_uint8_images() -> None:
    with pytest.raises(TypeError, match="uint8"):
        random_colour_mix(torch.rand(2, 4, 4, 3), 0.2)


# ---- CLI: swan demos / swan train ------------------------------------------------------------


def _one_error_line(capsys: pytest.CaptureFixture[str], args: list[str], start: str) -> str:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_demos_unknown_task_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.hdf5"
    line = _one_error_line(
        capsys, ["demos", "--task", "swan_envs/Nope-v0", "--out", str(out)], "error: --task:"
    )
    assert "Nope" in line and not out.exists()


def test_demos_bad_env_kwarg_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demos", "--task", "swan_envs/Reach-v0", "--out", str(tmp_path / "x.hdf5")]
    line = _one_error_line(
        capsys, [*args, "--workers", "1", "--env-kwarg", "bogus=1"], "error: the demo env"
    )
    assert "bogus" in line
    _one_error_line(capsys, [*args, "--env-kwarg", "a=[1"], "error: --env-kwarg: cannot parse")
    assert list(tmp_path.iterdir()) == []


def test_train_run_dir_that_is_a_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.write_text("not a directory")
    _one_error_line(
        capsys,
        ["train", "--config", CONFIG, "--run-dir", str(run)],
        f"error: --run-dir: {run} exists and is not a directory",
    )
    assert run.read_text() == "not a directory"


def test_override_fills_a_section_left_empty_in_the_yaml(tmp_path: Path) -> None:
    # `env:` with only comments under it is null in YAML; --set env.id=... must still work
    text = BASE + "env:\n  # id: swan_envs/Reach-v0\n"
    cfg = load_config(_config(tmp_path, text), ["env.id=swan_envs/Reach-v0"])
    assert cfg.env.id == "swan_envs/Reach-v0"


def test_env_kwargs_follow_the_config_files_yaml_rules() -> None:
    """``--env-kwarg`` values parse as config values do: ``1e-3`` is a float (YAML 1.1
    made it a string), a date-like value stays text."""
    from swan_policy.cli._app import _parse_kwargs

    got = _parse_kwargs(["noise=1e-3", "tag=2024-05-01", "n=3"], "--env-kwarg")
    assert got == {"noise": 0.001, "tag": "2024-05-01", "n": 3}


def test_atomic_write_syncs_the_file_then_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename is durable too: after the file's data, the directory entry is synced
    (a power loss after the rename could otherwise bring back the old file)."""
    import stat

    from swan_policy import serialization

    synced: list[bool] = []
    real_fsync = os.fsync

    def record(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    serialization.atomic_write(tmp_path / "a.json", lambda p: p.write_text("{}"))
    assert synced == [False, True]
    assert (tmp_path / "a.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ("abc", "dagger.budget: Input should be a valid number"),
        ([1, "x"], "dagger.budget.1: Input should be a valid number"),
    ],
)
def test_union_field_errors_name_the_field_not_the_member_type(
    budget: object, message: str
) -> None:
    """``dagger.budget`` is a number or a list of numbers: the error names the field (not
    ``dagger.budget.float``), picks the member that got furthest, and counts it once."""
    from swan_policy.config import ConfigError, validate_config

    with pytest.raises(ConfigError) as info:
        validate_config({"dagger": {"budget": budget}})
    text = str(info.value)
    assert text.startswith(message), text
    assert "more)" not in text and "float" not in text.split(":")[0]

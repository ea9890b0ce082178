"""HDF5 demo files: collection (1 and 2 workers), atomic writes, validation errors, loading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
import pytest

from swan_policy.data import demos
from swan_policy.data.demos import (
    DemoFileError,
    collect_demos,
    load_demos,
    validate_demo_file,
)

SMALL = {"width": 32, "height": 32}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_collect_round_trip_and_layout(tmp_path: Path) -> None:
    out = tmp_path / "reach.hdf5"
    stats = collect_demos("swan_envs/Reach-v0", 3, out, env_kwargs=SMALL, progress=False)
    assert stats.episodes == 3 and stats.successes == 3 and stats.samples > 3
    assert _files(tmp_path) == ["reach.hdf5"]  # no temp file left behind
    with h5py.File(out, "r") as f:
        data = f["data"]
        assert sorted(data) == ["demo_0", "demo_1", "demo_2"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args == {"env_name": "swan_envs/Reach-v0", "type": 2, "env_kwargs": SMALL}
        assert data.attrs["total"] == stats.samples and data.attrs["swan_format_version"] == 1
        demo = data["demo_0"]
        n = demo.attrs["num_samples"]
        assert demo["obs/pixels"].shape == (n, 32, 32, 3) and demo["obs/pixels"].dtype == np.uint8
        assert demo["obs/proprio"].shape == (n, 6) and demo["obs/proprio"].dtype == np.float32
        assert demo["actions"].shape == (n, 2) and demo["actions"].dtype == np.float32
        assert demo["rewards"].shape == (n,) and list(demo["dones"][-2:]) == [0, 1]
        assert bool(demo.attrs["success"]) and demo.attrs["seed"] == 0
    info = validate_demo_file(out)
    assert info.num_demos == 3 and info.obs_shapes == {"pixels": (32, 32, 3), "proprio": (6,)}
    dataset = load_demos(out)
    assert len(dataset) == stats.samples and dataset.num_episodes == 3
    assert dataset.dones.sum() == 3 and dataset.dones[dataset.episode_lengths.cumsum() - 1].all()
    first = dataset.episode(1)
    assert first["actions"].shape[0] == dataset.episode_lengths[1]


def _torch_free_expert(env: gym.Env[Any, Any]) -> Any:
    """The default expert, after checking that this (worker) process never imported torch."""
    assert "torch" not in sys.modules, "a demo worker imported torch"
    from swan_envs.experts import make_expert

    return make_expert(env)


def test_two_workers_write_the_same_demos_as_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one.hdf5", tmp_path / "two.hdf5"
    collect_demos("swan_envs/Push-v0", 3, one, workers=1, seed=7, env_kwargs=SMALL, progress=False)
    # The factory runs in the worker processes: it proves they import no torch.
    collect_demos(
        "swan_envs/Push-v0",
        3,
        two,
        workers=2,
        seed=7,
        env_kwargs=SMALL,
        progress=True,
        expert_factory=_torch_free_expert,
    )
    a, b = load_demos(one), load_demos(two)
    assert np.array_equal(a.episode_lengths, b.episode_lengths)
    assert np.array_equal(a.obs["pixels"], b.obs["pixels"])
    assert np.array_equal(a.actions, b.actions) and np.array_equal(a.rewards, b.rewards)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.hdf5", "two.hdf5"]


def test_flat_box_env_demos_are_proprio_dicts(tmp_path: Path) -> None:
    # InvertedPendulum-v5 observes a flat Box: demos see it as make_env does, {"proprio": obs}
    from swan_policy.config import EnvConfig
    from swan_policy.envs import make_env

    one, two = tmp_path / "one.hdf5", tmp_path / "two.hdf5"
    stats = collect_demos("InvertedPendulum-v5", 2, one, progress=False)
    collect_demos(
        "InvertedPendulum-v5", 2, two, workers=2, progress=False, expert_factory=_torch_free_expert
    )
    assert stats.episodes == 2 and stats.mean_return > 100  # the expert balances the pole
    info = validate_demo_file(one)
    assert info.obs_shapes == {"proprio": (4,)}
    a, b = load_demos(one), load_demos(two)
    assert a.obs["proprio"].dtype == np.float32 and a.actions.shape == (stats.samples, 1)
    assert np.array_equal(a.obs["proprio"], b.obs["proprio"])
    first, _ = make_env(EnvConfig(id="InvertedPendulum-v5")).reset(seed=0)
    np.testing.assert_array_equal(a.episode(0)["obs"]["proprio"][0], first["proprio"])
    # imitation trains pixel policies: a clear refusal, not a KeyError deep in BC
    from swan_policy.data.demos import DemoFileError
    from swan_policy.train.bc import load_bc_data

    with pytest.raises(DemoFileError, match=r"one\.hdf5: observation keys \['proprio'\]"):
        load_bc_data(one)


def _idle_expert(env: gym.Env[Any, Any]) -> Any:
    return lambda obs: np.zeros(env.action_space.shape, dtype=np.float32)


def test_only_success_gives_up_and_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "never.hdf5"
    with pytest.raises(RuntimeError, match="succeeded in 0 of 21 episodes"):
        collect_demos(
            "swan_envs/Reach-v0",
            1,
            out,
            env_kwargs=SMALL,
            progress=False,
            only_success=True,
            expert_factory=_idle_expert,
        )
    assert _files(tmp_path) == []


def test_keep_all_stores_failures_with_their_flag(tmp_path: Path) -> None:
    out = tmp_path / "idle.hdf5"
    stats = collect_demos(
        "swan_envs/Reach-v0", 2, out, env_kwargs=SMALL, progress=False, expert_factory=_idle_expert
    )
    assert stats.successes == 0 and stats.samples == 100  # 2 full episodes of 50 steps
    assert not load_demos(out).success.any()


def test_interrupted_collection_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = demos._write_episode
    calls = []

    def write_then_interrupt(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_write(*args)

    monkeypatch.setattr(demos, "_write_episode", write_then_interrupt)
    out = tmp_path / "cut.hdf5"
    with pytest.raises(KeyboardInterrupt):
        collect_demos("swan_envs/Reach-v0", 4, out, env_kwargs=SMALL, progress=False)
    assert _files(tmp_path) == []


def test_a_killed_writers_temp_file_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    """A SIGKILLed ``swan demos`` leaves ``.<out>.<pid>.tmp`` behind; the next collection
    into the same file removes it. A temp file whose process is alive stays."""
    out = tmp_path / "reach.hdf5"
    dead = tmp_path / f".{out.name}.{2**22 + 7}.tmp"  # above Linux's largest pid: no process
    live = tmp_path / f".{out.name}.{os.getppid()}.tmp"
    other = tmp_path / ".other.hdf5.12.tmp"  # another file's temp: not ours to judge
    for f in (dead, live, other):
        f.write_bytes(b"partial")
    collect_demos("swan_envs/Reach-v0", 1, out, env_kwargs=SMALL, progress=False)
    assert out.is_file() and not dead.exists()
    assert live.exists() and other.exists()


def _broken_expert(env: gym.Env[Any, Any]) -> Any:
    def act(obs: Any) -> np.ndarray:
        raise ValueError("the expert broke on purpose")

    return act


def test_worker_error_is_reported_with_its_traceback(tmp_path: Path) -> None:
    out = tmp_path / "broken.hdf5"
    with pytest.raises(RuntimeError, match=r"demo worker \d failed:\n") as err:
        collect_demos(
            "swan_envs/Reach-v0",
            4,
            out,
            workers=2,
            env_kwargs=SMALL,
            progress=False,
            expert_factory=_broken_expert,
        )
    assert "Traceback" in str(err.value) and "in act" in str(err.value)
    assert "ValueError: the expert broke on purpose" in str(err.value)
    assert _files(tmp_path) == []


def test_unpicklable_expert_factory_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be picklable"):
        collect_demos(
            "swan_envs/Reach-v0",
            2,
            tmp_path / "x.hdf5",
            workers=2,
            progress=False,
            expert_factory=lambda env: _idle_expert(env),
        )
    assert _files(tmp_path) == []


def test_interrupt_with_workers_ends_them_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write, real_close = demos._write_episode, demos._ProcessWorkers.close
    calls: list[int] = []
    processes: list[Any] = []

    def write_then_interrupt(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # a real Ctrl-C (SIGINT) while the workers are busy
            signal.raise_signal(signal.SIGINT)
        real_write(*args)

    def spy_close(self: Any, abort: bool = False) -> None:
        processes.extend(self.processes)
        real_close(self, abort)

    monkeypatch.setattr(demos, "_write_episode", write_then_interrupt)
    monkeypatch.setattr(demos._ProcessWorkers, "close", spy_close)
    # Python's own Ctrl-C handler, as in a user's process (collect_demos defers only that
    # one; a handler another test left behind would take this test's SIGINT instead).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            collect_demos(
                "swan_envs/Reach-v0", 20, tmp_path / "cut.hdf5", workers=2, progress=False
            )
        handler_after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert handler_after is signal.default_int_handler  # handler restored
    assert _files(tmp_path) == []
    assert len(processes) == 2 and all(p.poll() is not None for p in processes)
    assert len(calls) == 2  # the collection stopped right after the Ctrl-C


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "x.hdf5"
    out.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="x.hdf5 exists"):
        collect_demos("swan_envs/Reach-v0", 1, out, env_kwargs=SMALL, progress=False)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        collect_demos("swan_envs/Reach-v0", 0, tmp_path / "y.hdf5", progress=False)


# ---- validation on hand-made files (fast: no simulator) -----------------------------------------


def _write_file(path: Path, lengths: tuple[int, ...] = (10, 10), **edits: Any) -> Path:
    """A valid demo file, then ``edits``: dataset path -> replacement array (None deletes)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, n in enumerate(lengths):
            demo = data.create_group(f"demo_{i}")
            demo.create_dataset("obs/pixels", data=rng.integers(0, 255, (n, 8, 8, 3), np.uint8))
            demo.create_dataset("obs/proprio", data=rng.normal(size=(n, 4)).astype(np.float32))
            demo.create_dataset("actions", data=rng.uniform(-1, 1, (n, 2)).astype(np.float32))
            demo.create_dataset("rewards", data=np.zeros(n, np.float32))
            demo.create_dataset("dones", data=np.eye(n, dtype=np.uint8)[-1])
            demo.attrs["num_samples"] = n
        data.attrs["env_args"] = json.dumps({"env_name": "x", "type": 2, "env_kwargs": {}})
        data.attrs["total"] = sum(lengths)
        data.attrs["swan_format_version"] = 1
        for name, value in edits.items():
            del f[name.replace("__", "/")]
            if value is not None:
                f.create_dataset(name.replace("__", "/"), data=value)
    return path


def test_valid_hand_made_file_loads(tmp_path: Path) -> None:
    dataset = load_demos(_write_file(tmp_path / "ok.hdf5", lengths=(3, 5)))
    assert dataset.obs["pixels"].shape == (8, 8, 8, 3)
    assert list(dataset.episode_starts) == [0, 3] and list(dataset.episode_lengths) == [3, 5]


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            {"data__demo_1__actions": np.zeros((9, 2), np.float32)},
            r"data/demo_1/actions has 9 rows but obs/pixels has 10",
        ),
        (
            {"data__demo_0__obs__pixels": np.zeros((10, 8, 8, 3), np.float32)},
            r"data/demo_0/obs/pixels has dtype float32 .* expected uint8 N x H x W x C",
        ),
        (
            {"data__demo_0__obs__pixels": np.zeros((10, 3, 8, 8), np.uint8)},
            r"data/demo_0/obs/pixels has shape \(10, 3, 8, 8\); images must be N x H x W x C",
        ),
        (
            {"data__demo_1__actions": np.full((10, 2), np.nan, np.float32)},
            r"data/demo_1/actions holds NaN or Inf \(first at row 0\)",
        ),
        (
            {"data__demo_0__actions": np.zeros((10, 2), np.int64)},
            r"data/demo_0/actions has dtype int64, expected float32",
        ),
        ({"data__demo_0__rewards": None}, r"data/demo_0/rewards is missing"),
        (
            {"data__demo_1__obs__proprio": np.zeros((10, 5), np.float32)},
            r"data/demo_1/obs/proprio is float32 \(5,\) per step but data/demo_0/obs/proprio "
            r"is float32 \(4,\)",
        ),
    ],
)
def test_validation_names_the_problem(tmp_path: Path, edits: dict[str, Any], message: str) -> None:
    path = _write_file(tmp_path / "bad.hdf5", **edits)
    with pytest.raises(DemoFileError, match=message) as err:
        validate_demo_file(path)
    assert str(path) in str(err.value)
    with pytest.raises(DemoFileError, match=message):
        load_demos(path)


def test_validation_of_layout_and_attributes(tmp_path: Path) -> None:
    path = _write_file(tmp_path / "total.hdf5")
    with h5py.File(path, "a") as f:
        f["data"].attrs["total"] = 99
    with pytest.raises(DemoFileError, match="data attribute total is 99 but the demos hold 20"):
        validate_demo_file(path)
    empty = tmp_path / "empty.hdf5"
    with h5py.File(empty, "w") as f:
        f.create_group("data")
    with pytest.raises(DemoFileError, match="data holds no demo_<i> groups"):
        validate_demo_file(empty)
    with h5py.File(empty, "w") as f:
        f.create_group("other")
    with pytest.raises(DemoFileError, match="no 'data' group"):
        validate_demo_file(empty)


def test_truncated_and_garbage_files_give_a_clear_error(tmp_path: Path) -> None:
    good = _write_file(tmp_path / "good.hdf5", lengths=(200, 200))
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DemoFileError, match=r"truncated\.hdf5: .*(HDF5|corrupted)"):
        validate_demo_file(truncated)
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"\x80\x04\x95 this is a pickle, not HDF5" * 10)
    with pytest.raises(DemoFileError, match=r"garbage\.hdf5: not a readable HDF5 file"):
        load_demos(garbage)
    with pytest.raises(DemoFileError, match=r"missing\.hdf5: no such demo file"):
        load_demos(tmp_path / "missing.hdf5")


def test_a_dataset_declaring_more_than_memory_is_refused_before_reading(tmp_path: Path) -> None:
    """A few-KB file can declare terabytes (chunked, never written): refused by its shape,
    before an allocation fails or the process is killed for memory."""
    path = _write_file(tmp_path / "huge.hdf5")
    with h5py.File(path, "a") as f:
        del f["data/demo_1/obs/pixels"]
        f.create_dataset(
            "data/demo_1/obs/pixels",
            shape=(10**9, 64, 64, 3),
            dtype=np.uint8,
            chunks=(1, 64, 64, 3),
        )
    assert path.stat().st_size < 10**6
    message = r"huge\.hdf5: its datasets declare .* GiB in memory, more than this machine has"
    for read in (validate_demo_file, load_demos):
        with pytest.raises(DemoFileError, match=message) as err:
            read(path)
        assert "largest is data/demo_1/obs/pixels, uint8 (1000000000, 64, 64, 3)" in str(err.value)


def test_demos_module_and_one_worker_collection_stay_torch_free(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; "
        "from swan_policy.data.demos import collect_demos, load_demos; "
        f"collect_demos('swan_envs/Reach-v0', 1, Path({str(tmp_path / 'a.hdf5')!r}), "
        "env_kwargs={'width': 16, 'height': 16}, progress=False); "
        f"load_demos({str(tmp_path / 'a.hdf5')!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""Expert demonstrations in HDF5 (robomimic layout): collect, validate, load.

File layout (DESIGN.md section 8; the robomimic convention, so robomimic users can bring data)::

    data/                       attrs: env_args (JSON), total, swan_format_version
      demo_0/                   attrs: num_samples, success, seed
        obs/pixels              uint8   (N, H, W, C)   channels last
        obs/proprio             float32 (N, P)
        actions                 float32 (N, A)
        rewards                 float32 (N,)
        dones                   uint8   (N,)           1 on the episode's last step
      demo_1/ ...

``collect_demos`` runs the scripted expert inside each environment worker (it needs the
simulator state, which never crosses a process boundary) and writes the file atomically: a
temp file in the same folder, fsync, then ``os.replace``. ``validate_demo_file`` and
``load_demos`` check everything a training run relies on and raise ``DemoFileError`` naming
the path and the problem. Nothing is ever unpickled.

This module imports numpy, h5py, gymnasium, stable-baselines3's vec envs and rich, not torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

SWAN_FORMAT_VERSION = 1
GYM_ENV_TYPE = 2  # robomimic's EnvType.GYM_TYPE
_DEMO_NAME = re.compile(r"^demo_(\d+)$")

ExpertFactory = Callable[[gym.Env[Any, Any]], Callable[[Any], np.ndarray]]


class DemoFileError(ValueError):
    """A demo file is missing, not HDF5, or does not have the expected layout."""


@dataclass(frozen=True)
class DemoStats:
    """What ``collect_demos`` did."""

    path: Path
    episodes: int  # demos written
    attempted: int  # episodes run to completion (some may have been dropped)
    successes: int  # successful episodes among the demos written
    samples: int  # total steps written
    mean_return: float
    mean_length: float
    seconds: float
    steps_per_second: float  # env steps (kept or not) per second, after worker start-up

    @property
    def success_rate(self) -> float:
        return self.successes / max(self.episodes, 1)


@dataclass(frozen=True)
class DemoFileInfo:
    """Summary of a valid demo file (what ``validate_demo_file`` returns)."""

    path: Path
    num_demos: int
    total: int
    obs_shapes: dict[str, tuple[int, ...]]  # per-step shape of each observation key
    obs_dtypes: dict[str, str]
    action_dim: int
    env_args: dict[str, Any]


@dataclass
class DemoDataset:
    """All demos of a file, concatenated per key, with episode boundaries.

    Episode ``i`` is rows ``episode_starts[i] : episode_starts[i] + episode_lengths[i]``.
    """

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    episode_starts: np.ndarray
    episode_lengths: np.ndarray
    success: np.ndarray
    env_args: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_lengths.shape[0])

    def episode(self, i: int) -> dict[str, Any]:
        """Episode ``i`` as ``{"obs": {key: array}, "actions", "rewards", "dones"}`` (views)."""
        rows = slice(
            int(self.episode_starts[i]), int(self.episode_starts[i] + self.episode_lengths[i])
        )
        return {
            "obs": {k: v[rows] for k, v in self.obs.items()},
            "actions": self.actions[rows],
            "rewards": self.rewards[rows],
            "dones": self.dones[rows],
        }


# ---- collection ---------------------------------------------------------------------------------


class DemoWorker(gym.Wrapper[Any, Any, Any, Any]):
    """Plays whole expert episodes inside the env's own process (the expert reads the sim).

    Worker ``rank`` of ``workers`` plays episodes ``rank, rank + workers, ...``; episode ``i``
    is reset with seed ``seed + i``, so each episode's content depends on its index only, not
    on the number of workers. Only finished episodes (numpy arrays) leave the process.
    """

    def __init__(
        self,
        env: gym.Env[Any, Any],
        expert_factory: ExpertFactory,
        seed: int,
        rank: int,
        workers: int,
        max_steps: int = 10_000,
    ) -> None:
        super().__init__(env)
        self.expert = expert_factory(env)
        self._seed, self._workers, self._max_steps = seed, workers, max_steps
        self._next_index = rank

    def play(self, count: int) -> list[dict[str, Any]]:
        """Play the next ``count`` episodes of this worker's schedule.

        Returns one dict per episode (``index``, ``obs``, ``actions``, ``rewards``,
        ``success``), or a single ``{"error": traceback}`` if the env or expert failed.
        """
        try:
            return [self._play_one() for _ in range(count)]
        except Exception:  # reported by the parent, with this worker's traceback
            return [{"error": traceback.format_exc()}]

    def _play_one(self) -> dict[str, Any]:
        index, self._next_index = self._next_index, self._next_index + self._workers
        obs, info = self.env.reset(seed=self._seed + index)
        frames: dict[str, list[np.ndarray]] = {key: [] for key in obs}
        actions: list[np.ndarray] = []
        rewards: list[float] = []
        done = False
        while not done and len(actions) < self._max_steps:
            action = np.asarray(self.expert(obs), dtype=np.float32)
            for key, value in obs.items():
                frames[key].append(np.array(value))
            actions.append(action)
            obs, reward, terminated, truncated, info = self.env.step(action)
            rewards.append(float(reward))
            done = terminated or truncated
        return {
            "index": index,
            "obs": {key: np.stack(values) for key, values in frames.items()},
            "actions": np.stack(actions),
            "rewards": np.asarray(rewards, dtype=np.float32),
            "success": bool(info.get("is_success", False)),
        }


def _default_expert_factory(env: gym.Env[Any, Any]) -> Callable[[Any], np.ndarray]:
    from swan_envs.experts import make_expert

    return make_expert(env)


def _make_worker(
    env_id: str,
    env_kwargs: dict[str, Any],
    expert_factory: ExpertFactory | None,
    seed: int,
    rank: int,
    workers: int,
) -> DemoWorker:
    if env_id.startswith("swan_envs/"):
        import swan_envs  # noqa: F401  (registers the ids in this process)
    env = gym.make(env_id, **env_kwargs)
    return DemoWorker(env, expert_factory or _default_expert_factory, seed, rank, workers)


def _write_episode(group: h5py.Group, episode: dict[str, Any], seed: int) -> None:
    """Write one finished episode as a demo group (robomimic layout)."""
    n = int(episode["actions"].shape[0])
    obs_group = group.create_group("obs")
    for key, array in episode["obs"].items():
        # Images compress well and lzf is fast; it ships with every h5py.
        compression = "lzf" if array.dtype == np.uint8 and array.ndim == 4 else None
        obs_group.create_dataset(key, data=array, compression=compression)
    group.create_dataset("actions", data=episode["actions"].astype(np.float32))
    group.create_dataset("rewards", data=episode["rewards"].astype(np.float32))
    dones = np.zeros(n, dtype=np.uint8)
    dones[-1] = 1
    group.create_dataset("dones", data=dones)
    group.attrs["num_samples"] = n
    group.attrs["success"] = bool(episode["success"])
    group.attrs["seed"] = int(seed)


class _Workers:
    """``workers`` DemoWorkers: in this process for one, else in SB3's ``SubprocVecEnv``.

    ``env_method`` sends to every worker before it waits for any, so they play in parallel;
    only whole episodes cross the pipe (no per-step round trips).
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        expert_factory: ExpertFactory | None,
        seed: int,
        workers: int,
    ) -> None:
        self.local: DemoWorker | None = None
        self.vec: Any = None
        if workers == 1:
            # In-process: no stable-baselines3 import (and so no torch) for one worker.
            self.local = _make_worker(env_id, env_kwargs, expert_factory, seed, 0, 1)
            return
        from stable_baselines3.common.vec_env import SubprocVecEnv

        fns: list[Callable[[], gym.Env[Any, Any]]] = [
            functools.partial(_make_worker, env_id, env_kwargs, expert_factory, seed, rank, workers)
            for rank in range(workers)
        ]
        self.vec = SubprocVecEnv(fns)

    def play(self, count: int) -> list[dict[str, Any]]:
        if self.local is not None:
            batches = [self.local.play(count)]
        else:
            try:
                batches = self.vec.env_method("play", count)
            except (EOFError, ConnectionError) as err:
                raise RuntimeError(f"a demo worker process died: {err!r}") from err
        episodes = [episode for batch in batches for episode in batch]
        for episode in episodes:
            if "error" in episode:
                raise RuntimeError(f"a demo worker failed:\n{episode['error']}")
        return episodes

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
        elif self.vec is not None:
            _close_vec_env(self.vec)


def _close_vec_env(vec: Any) -> None:
    """Close the workers; if they are already gone (Ctrl-C, crash), stop what is left."""
    try:
        vec.close()
    except (EOFError, OSError, BrokenPipeError):
        for process in getattr(vec, "processes", []):
            if process.is_alive():
                process.terminate()
            process.join(timeout=5)


@contextlib.contextmanager
def _atomic_h5(out: Path) -> Iterator[h5py.File]:
    """An HDF5 file that appears at ``out`` only if the block finishes without an exception."""
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    handle = h5py.File(tmp, "w")
    try:
        yield handle
        handle.flush()
        handle.close()
        with open(tmp, "rb+") as raw:
            os.fsync(raw.fileno())
        os.replace(tmp, out)
        with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsynced
            dir_fd = os.open(out.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(Exception):
            handle.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


class _Selection:
    """Decides which finished episodes become demos, independent of worker timing."""

    def __init__(self, episodes: int, only_success: bool) -> None:
        self.episodes, self.only_success = episodes, only_success
        self.finished: dict[int, bool] = {}  # episode index -> success

    def wanted(self, index: int, success: bool) -> bool:
        return (success or not self.only_success) and (self.only_success or index < self.episodes)

    def chosen(self) -> list[int] | None:
        """The demo indices once they are settled, else None."""
        if not self.only_success:
            done = all(i in self.finished for i in range(self.episodes))
            return list(range(self.episodes)) if done else None
        picked: list[int] = []
        i = 0
        # Walk the contiguous prefix of finished episodes: the first N successes by index.
        while i in self.finished and len(picked) < self.episodes:
            if self.finished[i]:
                picked.append(i)
            i += 1
        return picked if len(picked) == self.episodes else None


def collect_demos(
    env_id: str,
    episodes: int,
    out: Path,
    workers: int = 1,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
    only_success: bool = False,
    *,
    overwrite: bool = False,
    expert_factory: ExpertFactory | None = None,
) -> DemoStats:
    """Run the scripted expert and write its episodes to an HDF5 demo file.

    Episode ``i`` is reset with seed ``seed + i`` whatever the number of workers, so the file
    holds the same demos for ``workers=1`` and ``workers=2``.

    Args:
        env_id: a gymnasium id, e.g. ``"swan_envs/Reach-v0"``.
        episodes: number of demos to write (>= 1).
        out: the HDF5 file to create.
        workers: parallel environments; > 1 uses SB3's ``SubprocVecEnv`` (1 runs in-process).
        seed: seed of episode 0.
        env_kwargs: passed to ``gymnasium.make`` (e.g. ``{"variation": "hard"}``).
        progress: show a rich progress bar on stderr.
        only_success: keep only successful episodes (the first ``episodes`` by index); by
            default every episode is kept and its ``success`` attribute says how it ended.
        overwrite: replace ``out`` if it exists (else ``FileExistsError``).
        expert_factory: ``env -> expert`` (default ``swan_envs.experts.make_expert``); it must
            be picklable when ``workers > 1``.

    Returns:
        A :class:`DemoStats`.

    Raises:
        ValueError: ``episodes`` or ``workers`` < 1.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        RuntimeError: with ``only_success``, the expert failed too often (20x ``episodes``
            attempts did not give enough successes).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(env_kwargs or {})
    env_args = {"env_name": env_id, "type": GYM_ENV_TYPE, "env_kwargs": kwargs}
    # Without only_success, episodes 0..N-1 always settle; with it, give up at some point.
    max_attempts = 20 * episodes + workers if only_success else None

    start = time.perf_counter()
    selection = _Selection(episodes, only_success)
    returns: dict[int, float] = {}
    lengths: dict[int, int] = {}
    pool = _Workers(env_id, kwargs, expert_factory, seed, workers)
    try:
        with _atomic_h5(out) as handle, _progress_bar(progress, env_id, episodes) as bar:
            staging = handle.create_group("staging")
            stepping_since = time.perf_counter()  # steps/s excludes worker start-up
            env_steps = 0
            while (chosen := selection.chosen()) is None:
                if max_attempts is not None and len(selection.finished) >= max_attempts:
                    n_ok = sum(selection.finished.values())
                    raise RuntimeError(
                        f"the expert succeeded in {n_ok} of {len(selection.finished)} episodes "
                        f"of {env_id}; {episodes} successful demos were asked for"
                    )
                # A few episodes per worker per round: fewer round trips, and uneven episode
                # lengths average out; near the end, just what is still missing.
                have = sum(selection.finished.values()) if only_success else len(selection.finished)
                missing = max(episodes - have, 1)
                for episode in pool.play(min(4, -(-missing // workers))):
                    index, success = int(episode["index"]), bool(episode["success"])
                    env_steps += int(episode["actions"].shape[0])
                    selection.finished[index] = success
                    if selection.wanted(index, success):
                        _write_episode(staging.create_group(str(index)), episode, seed + index)
                        returns[index] = float(np.sum(episode["rewards"]))
                        lengths[index] = int(episode["actions"].shape[0])
                bar(selection)
            stepping_seconds = time.perf_counter() - stepping_since
            data = handle.create_group("data")
            for demo_id, index in enumerate(chosen):
                handle.move(f"staging/{index}", f"data/demo_{demo_id}")
            del handle["staging"]  # episodes written but not chosen (only_success extras)
            total = int(sum(lengths[i] for i in chosen))
            data.attrs["env_args"] = json.dumps(env_args)
            data.attrs["total"] = total
            data.attrs["swan_format_version"] = SWAN_FORMAT_VERSION
    finally:
        pool.close()
    seconds = time.perf_counter() - start
    return DemoStats(
        path=out,
        episodes=len(chosen),
        attempted=len(selection.finished),
        successes=sum(selection.finished[i] for i in chosen),
        samples=total,
        mean_return=float(np.mean([returns[i] for i in chosen])),
        mean_length=float(np.mean([lengths[i] for i in chosen])),
        seconds=seconds,
        steps_per_second=env_steps / max(stepping_seconds, 1e-9),
    )


@contextlib.contextmanager
def _progress_bar(show: bool, env_id: str, episodes: int) -> Iterator[Callable[[_Selection], None]]:
    """A rich progress bar (episodes done, successes so far) or a no-op."""
    if not show:
        yield lambda selection: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("success {task.fields[success]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(f"demos {env_id}", total=episodes, success="0/0")

        def update(selection: _Selection) -> None:
            done = len(selection.finished)
            ok = sum(selection.finished.values())
            kept = ok if selection.only_success else min(done, episodes)
            bar.update(task, completed=min(kept, episodes), success=f"{ok}/{done}")

        yield update


# ---- validation and loading ---------------------------------------------------------------------


def _fail(path: Path, message: str) -> DemoFileError:
    return DemoFileError(f"{path}: {message}")


def _check_numeric(path: Path, name: str, array: np.ndarray, kinds: str, what: str) -> None:
    if array.dtype.kind not in kinds:
        raise _fail(path, f"{name} has dtype {array.dtype}, expected {what}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.argmax(~np.isfinite(array).reshape(array.shape[0], -1).all(axis=1)))
        raise _fail(path, f"{name} holds NaN or Inf (first at row {bad})")


def _dataset(path: Path, group: h5py.Group, name: str, where: str) -> np.ndarray:
    item = group.get(name)
    if not isinstance(item, h5py.Dataset):
        raise _fail(path, f"{where}/{name} is missing (expected a dataset)")
    if item.dtype.kind in "OSUV" or h5py.check_vlen_dtype(item.dtype) is not None:
        raise _fail(path, f"{where}/{name} has dtype {item.dtype}, expected numbers")
    return np.asarray(item[()])


def _read_demo(path: Path, demo: h5py.Group, where: str) -> dict[str, Any]:
    """Read and check one demo group; every problem names ``where``."""
    obs_group = demo.get("obs")
    if not isinstance(obs_group, h5py.Group) or len(obs_group) == 0:
        raise _fail(path, f"{where}/obs is missing or empty (expected a group of datasets)")
    obs = {key: _dataset(path, obs_group, key, f"{where}/obs") for key in obs_group}
    actions = _dataset(path, demo, "actions", where)
    rewards = _dataset(path, demo, "rewards", where)
    dones = _dataset(path, demo, "dones", where)
    for key, array in obs.items():
        name = f"{where}/obs/{key}"
        if array.dtype == np.uint8 and array.ndim == 4:
            if array.shape[-1] % 3 != 0 and array.shape[-1] != 1:
                raise _fail(
                    path,
                    f"{name} has shape {array.shape}; images must be N x H x W x C, channels "
                    "last, with C = 1 or a multiple of 3",
                )
        elif key == "pixels":
            raise _fail(
                path,
                f"{name} has dtype {array.dtype} and shape {array.shape}, expected uint8 "
                "N x H x W x C",
            )
        else:
            _check_numeric(path, name, array, "fiub", "numbers")
            if array.ndim < 2:
                raise _fail(path, f"{name} has shape {array.shape}, expected N x D")
    _check_numeric(path, f"{where}/actions", actions, "f", "float32")
    if actions.ndim != 2:
        raise _fail(path, f"{where}/actions has shape {actions.shape}, expected N x A")
    _check_numeric(path, f"{where}/rewards", rewards, "f", "floats")
    _check_numeric(path, f"{where}/dones", dones, "biu", "bool or integers")
    for name, array in (("rewards", rewards), ("dones", dones)):
        if array.ndim != 1:
            raise _fail(path, f"{where}/{name} has shape {array.shape}, expected (N,)")
    first_key = next(iter(obs))
    n = obs[first_key].shape[0]
    if n < 1:
        raise _fail(path, f"{where} has no steps")
    for name, array in [
        *((f"obs/{k}", v) for k, v in obs.items()),
        ("actions", actions),
        ("rewards", rewards),
        ("dones", dones),
    ]:
        if array.shape[0] != n:
            raise _fail(
                path, f"{where}/{name} has {array.shape[0]} rows but obs/{first_key} has {n}"
            )
    declared = demo.attrs.get("num_samples")
    if declared is not None and int(declared) != n:
        raise _fail(path, f"{where} attribute num_samples is {int(declared)} but it has {n} steps")
    return {
        "obs": obs,
        "actions": actions,
        "rewards": rewards,
        "dones": dones,
        "success": bool(demo.attrs.get("success", False)),
    }


def _read_file(path: Path) -> tuple[DemoFileInfo, list[dict[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise DemoFileError(f"{path}: no such demo file")
    try:
        handle = h5py.File(path, "r")
    except OSError as err:
        raise DemoFileError(
            f"{path}: not a readable HDF5 file (truncated or corrupted?): {err}"
        ) from None
    try:
        with handle:
            return _scan(path, handle)
    except DemoFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:
        # h5py reports damaged blocks lazily, when a dataset is read.
        raise DemoFileError(f"{path}: corrupted HDF5 content: {err}") from None


def _scan(path: Path, handle: h5py.File) -> tuple[DemoFileInfo, list[dict[str, Any]]]:
    data = handle.get("data")
    if not isinstance(data, h5py.Group):
        raise _fail(path, "no 'data' group (expected the robomimic layout data/demo_<i>/...)")
    version = data.attrs.get("swan_format_version")
    if version is not None and int(version) > SWAN_FORMAT_VERSION:
        raise _fail(
            path,
            f"swan_format_version {int(version)} is newer than this reader ({SWAN_FORMAT_VERSION})",
        )
    env_args: dict[str, Any] = {}
    if "env_args" in data.attrs:
        raw = data.attrs["env_args"]
        try:
            env_args = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except json.JSONDecodeError as err:
            raise _fail(path, f"data attribute env_args is not JSON: {err}") from None
        if not isinstance(env_args, dict):
            raise _fail(path, "data attribute env_args must be a JSON object")
    names: list[tuple[int, str]] = []
    for name in data:
        match = _DEMO_NAME.match(name)
        if match is None:
            if name.startswith("demo"):
                raise _fail(path, f"data/{name} is not named demo_<integer>")
            continue
        names.append((int(match.group(1)), name))
    if not names:
        raise _fail(path, "data holds no demo_<i> groups")
    demos: list[dict[str, Any]] = []
    for _, name in sorted(names):
        demo = data[name]
        if not isinstance(demo, h5py.Group):
            raise _fail(path, f"data/{name} is not a group")
        demos.append(_read_demo(path, demo, f"data/{name}"))
    ref_name, ref = sorted(names)[0][1], demos[0]
    for (_, name), demo in zip(sorted(names), demos, strict=True):
        if set(demo["obs"]) != set(ref["obs"]):
            raise _fail(
                path,
                f"data/{name}/obs has keys {sorted(demo['obs'])} but data/{ref_name}/obs has "
                f"{sorted(ref['obs'])}",
            )
        for key in [*(f"obs/{k}" for k in ref["obs"]), "actions"]:
            a, b = _lookup(demo, key), _lookup(ref, key)
            if a.shape[1:] != b.shape[1:] or a.dtype != b.dtype:
                raise _fail(
                    path,
                    f"data/{name}/{key} is {a.dtype} {a.shape[1:]} per step but "
                    f"data/{ref_name}/{key} is {b.dtype} {b.shape[1:]}",
                )
    total = sum(int(d["actions"].shape[0]) for d in demos)
    if "total" in data.attrs and int(data.attrs["total"]) != total:
        raise _fail(
            path,
            f"data attribute total is {int(data.attrs['total'])} but the demos hold {total} steps",
        )
    info = DemoFileInfo(
        path=path,
        num_demos=len(demos),
        total=total,
        obs_shapes={k: tuple(v.shape[1:]) for k, v in ref["obs"].items()},
        obs_dtypes={k: str(v.dtype) for k, v in ref["obs"].items()},
        action_dim=int(ref["actions"].shape[1]),
        env_args=env_args,
    )
    return info, demos


def _lookup(demo: dict[str, Any], key: str) -> np.ndarray:
    if key.startswith("obs/"):
        return np.asarray(demo["obs"][key[4:]])
    return np.asarray(demo[key])


def validate_demo_file(path: str | os.PathLike[str]) -> DemoFileInfo:
    """Check a demo file's layout, shapes, dtypes and values.

    Checks: readable HDF5; a ``data`` group with ``demo_<i>`` groups; in each, ``obs/<key>``,
    ``actions``, ``rewards``, ``dones`` with the same number of rows (and ``num_samples``);
    images uint8 N x H x W x C (channels last); float32 actions; finite floats; the same
    per-step shapes in every demo; ``total`` and ``env_args`` attributes consistent.

    Returns:
        A :class:`DemoFileInfo` summary.

    Raises:
        DemoFileError: naming the path and what is wrong, e.g.
            ``data/demo_3/actions has 49 rows but obs/pixels has 50``.
    """
    info, _ = _read_file(Path(path))
    return info


def load_demos(path: str | os.PathLike[str]) -> DemoDataset:
    """Validate a demo file and load it, concatenated per key (demos in index order).

    Raises:
        DemoFileError: see :func:`validate_demo_file`.
    """
    info, demos = _read_file(Path(path))
    lengths = np.array([d["actions"].shape[0] for d in demos], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return DemoDataset(
        obs={k: np.concatenate([d["obs"][k] for d in demos]) for k in info.obs_shapes},
        actions=np.concatenate([d["actions"] for d in demos]).astype(np.float32),
        rewards=np.concatenate([d["rewards"] for d in demos]).astype(np.float32),
        dones=np.concatenate([d["dones"] for d in demos]).astype(bool),
        episode_starts=starts,
        episode_lengths=lengths,
        success=np.array([d["success"] for d in demos], dtype=bool),
        env_args=info.env_args,
    )

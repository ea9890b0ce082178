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
the path and the problem (the checks live in ``_demo_format.py``). Nothing is unpickled.

This module imports numpy, h5py, gymnasium, stable-baselines3's vec envs and rich, not torch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from swan_policy.data._demo_format import (
    SWAN_FORMAT_VERSION,
    DemoFileError,
    DemoFileInfo,
    read_demo_file,
)

GYM_ENV_TYPE = 2  # robomimic's EnvType.GYM_TYPE

ExpertFactory = Callable[[gym.Env[Any, Any]], Callable[[Any], np.ndarray]]


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

    def close(self, abort: bool = False) -> None:
        if self.local is not None:
            self.local.close()
        elif self.vec is not None:
            _close_vec_env(self.vec, abort)


def _close_vec_env(vec: Any, abort: bool) -> None:
    """Close the worker processes (started here, so ending them is ours to do).

    On an error or Ctrl-C a worker may still be playing, or blocked sending episodes nobody
    will read: stop them rather than wait for a graceful close that may never come.
    """
    if not abort:
        try:
            vec.close()
            return
        except (EOFError, OSError):
            pass  # already gone (e.g. killed): fall through and clean up
    for process in vec.processes:
        if process.is_alive():
            process.terminate()
        process.join(timeout=5)
    for remote in vec.remotes:
        remote.close()
    vec.closed = True


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
    completed = False
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
        completed = True
    finally:
        pool.close(abort=not completed)
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
    info, _ = read_demo_file(Path(path))
    return info


def load_demos(path: str | os.PathLike[str]) -> DemoDataset:
    """Validate a demo file and load it, concatenated per key (demos in index order).

    Raises:
        DemoFileError: see :func:`validate_demo_file`.
    """
    info, demos = read_demo_file(Path(path))
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


__all__ = [
    "SWAN_FORMAT_VERSION",
    "DemoDataset",
    "DemoFileError",
    "DemoFileInfo",
    "DemoStats",
    "DemoWorker",
    "collect_demos",
    "load_demos",
    "validate_demo_file",
]

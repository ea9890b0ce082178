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
simulator state, which never crosses a process boundary); workers are fresh interpreters
(never forked from a parent that may hold torch or GL contexts) fed episode indices, and the
parent writes each finished episode as it arrives. The file is written atomically: a temp
file in the same folder, fsync, then ``os.replace``. ``validate_demo_file`` and
``load_demos`` check everything a training run relies on and raise ``DemoFileError`` naming
the path and the problem (the checks live in ``_demo_format.py``). Nothing read from a file
is unpickled (pickle only carries episodes from our own workers over a private socket pair).

This module imports numpy, h5py, gymnasium and rich, never torch; worker processes import only
``_demo_worker`` and the env's packages.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from swan_policy.data._demo_format import (
    SWAN_FORMAT_VERSION,
    DemoFileError,
    DemoFileInfo,
    read_demo_file,
)
from swan_policy.data._demo_progress import progress_bar
from swan_policy.data._demo_worker import (
    WORKER_CODE,
    WORKER_ENV_DEFAULTS,
    ExpertFactory,
    make_env_and_expert,
    play_episode,
)

GYM_ENV_TYPE = 2  # robomimic's EnvType.GYM_TYPE


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


class _LocalWorker:
    """One worker, in this process: no child process, no start-up cost (and no torch)."""

    capacity = 1

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        expert_factory: ExpertFactory | None,
        seed: int,
    ) -> None:
        try:  # as a worker process reports it: a RuntimeError with the traceback
            self.env, self.expert = make_env_and_expert(env_id, env_kwargs, expert_factory)
        except Exception as err:
            raise RuntimeError(
                f"the demo env or expert could not be made:\n{traceback.format_exc()}"
            ) from err
        self.seed = seed
        self.queue: collections.deque[int] = collections.deque()

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def submit(self, index: int) -> None:
        self.queue.append(index)

    def wait(self) -> list[dict[str, Any]]:
        index = self.queue.popleft()
        try:
            return [play_episode(self.env, self.expert, index, self.seed)]
        except Exception as err:
            raise RuntimeError(
                f"the demo worker failed in episode {index}:\n{traceback.format_exc()}"
            ) from err

    def close(self, abort: bool = False) -> None:
        self.env.close()


class _ProcessWorkers:
    """``workers`` worker processes, each with its own env and expert, fed episode indices.

    Each worker is a fresh interpreter (``subprocess`` + ``python -c``: the isolation of
    multiprocessing's ``spawn``, without importing the parent's ``__main__``), so it is safe
    whatever the parent holds (torch, GL contexts, threads) and quick to start: it imports only
    ``_demo_worker`` and what making the env needs, never torch. A socket pair per worker
    carries indices down and whole episodes up (no per-step round trips). Up to ``depth``
    indices are queued per worker, so a worker that finishes an episode starts the next one
    without waiting for the parent.
    """

    def __init__(
        self,
        env_id: str,
        env_kwargs: dict[str, Any],
        expert_factory: ExpertFactory | None,
        seed: int,
        workers: int,
        depth: int = 2,
    ) -> None:
        config = {
            "env_id": env_id,
            "env_kwargs": env_kwargs,
            "expert_factory": expert_factory,
            "seed": seed,
        }
        try:
            payload = pickle.dumps(config)
        except Exception as err:
            raise ValueError(
                f"workers > 1 sends env_kwargs and expert_factory to the worker processes, "
                f"so they must be picklable (a module-level function, not a lambda): {err}"
            ) from err
        self.capacity = workers * depth
        self.depth = depth
        self.processes: list[subprocess.Popen[bytes]] = []
        self.conns: list[mp_connection.Connection] = []
        self.outstanding: list[int] = []
        env = {**WORKER_ENV_DEFAULTS, **os.environ}
        path = json.dumps([str(p) or os.getcwd() for p in sys.path])
        try:
            for _ in range(workers):
                parent_end, child_end = socket.socketpair()
                with parent_end, child_end:
                    fd = child_end.fileno()
                    process = subprocess.Popen(  # noqa: S603 (our own interpreter and code)
                        [sys.executable, "-c", WORKER_CODE, path, str(fd)],
                        pass_fds=(fd,),
                        env=env,
                        stdin=subprocess.DEVNULL,
                    )
                    self.processes.append(process)
                    self.conns.append(mp_connection.Connection(parent_end.detach()))
                self.outstanding.append(0)
                self.conns[-1].send_bytes(payload)
            for rank in range(workers):  # both start at once; wait until each env is made
                self._receive(rank, expect="ready")
        except BaseException:
            self.close(abort=True)
            raise

    @property
    def in_flight(self) -> int:
        return sum(self.outstanding)

    def submit(self, index: int) -> None:
        rank = min(range(len(self.conns)), key=self.outstanding.__getitem__)
        if self.outstanding[rank] >= self.depth:
            raise RuntimeError("every demo worker already has a full queue")  # a bug here
        try:
            self.conns[rank].send(index)
        except OSError as err:  # the worker is gone (killed, crashed) since its last episode
            raise self._died(rank) from err
        self.outstanding[rank] += 1

    def wait(self, timeout: float = 0.2) -> list[dict[str, Any]]:
        """Every episode that is back, after waiting up to ``timeout`` s for one (maybe none)."""
        busy = [rank for rank, n in enumerate(self.outstanding) if n > 0]
        ready = mp_connection.wait([self.conns[rank] for rank in busy], timeout)
        episodes = []
        for rank in busy:
            if self.conns[rank] in ready:
                episodes.append(self._receive(rank, expect="episode"))
                self.outstanding[rank] -= 1
        return episodes

    def _receive(self, rank: int, expect: str) -> Any:
        try:
            kind, payload = self.conns[rank].recv()
        except (EOFError, OSError) as err:
            raise self._died(rank) from err
        if kind == "error":
            raise RuntimeError(f"demo worker {rank} failed:\n{payload}")
        if kind != expect:
            raise RuntimeError(f"demo worker {rank} sent {kind!r}, expected {expect!r}")
        return payload

    def _died(self, rank: int) -> RuntimeError:
        process = self.processes[rank]
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        return RuntimeError(
            f"demo worker {rank} (pid {process.pid}) died (exit code {process.returncode}); "
            "its stderr is above"
        )

    def close(self, abort: bool = False) -> None:
        """End the worker processes (started here, so ending them is ours to do).

        A worker still playing (an error, Ctrl-C, or extra episodes no longer needed) is
        terminated rather than waited for; an idle one is told to stop.
        """
        for rank, process in enumerate(self.processes):
            conn = self.conns[rank] if rank < len(self.conns) else None
            idle = not abort and conn is not None and self.outstanding[rank] == 0
            if idle and conn is not None:
                with contextlib.suppress(OSError):
                    conn.send(None)
            if conn is not None:
                conn.close()
            if not idle and process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], None]]:
    """Turn Ctrl-C into a ``KeyboardInterrupt`` raised by ``check()``, at a point of our choosing.

    Python runs a signal handler between any two bytecodes, also inside weakref callbacks and
    ``__del__`` methods (h5py runs many), where a ``KeyboardInterrupt`` is only printed as
    "Exception ignored" and the collection would go on. So the first Ctrl-C sets a flag that
    the loop checks after every episode (the wait for workers wakes up to check it); a second
    Ctrl-C raises at once. Off the main thread, or with a SIGINT handler of the caller's own,
    nothing changes.
    """
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: None
        return
    hits: list[int] = []

    def handler(signum: int, frame: object) -> None:
        hits.append(signum)
        if len(hits) > 1:
            raise KeyboardInterrupt

    def check() -> None:
        if hits:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
    check()  # a Ctrl-C after the last check: the file is complete, but the caller asked to stop


def _remove_stale_temps(out: Path) -> None:
    """Delete ``.<out>.<pid>.tmp`` files whose writer is gone (a killed ``swan demos``):
    they never become ``out``, but a demo file can be large. A live writer's is kept."""
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = tmp.name[len(out.name) + 2 : -len(".tmp")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: is the process there?
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except (PermissionError, OverflowError):
            continue  # another user's live process, or not a pid


@contextlib.contextmanager
def _atomic_h5(out: Path) -> Iterator[h5py.File]:
    """An HDF5 file that appears at ``out`` only if the block finishes without an exception."""
    _remove_stale_temps(out)
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
        workers: parallel environments; > 1 starts that many worker processes (fresh
            interpreters that never import torch); 1 runs in this process.
        seed: seed of episode 0.
        env_kwargs: passed to ``gymnasium.make`` (e.g. ``{"variation": "hard"}``).
        progress: show a rich progress bar on stderr.
        only_success: keep only successful episodes (the first ``episodes`` by index); by
            default every episode is kept and its ``success`` attribute says how it ended.
        overwrite: replace ``out`` if it exists (else ``FileExistsError``).
        expert_factory: ``env -> expert`` (default ``swan_envs.experts.make_expert``); with
            ``workers > 1`` it must be picklable (a module-level function of an importable
            module: the workers import it).

    Returns:
        A :class:`DemoStats`.

    Ctrl-C (``KeyboardInterrupt``) or any error ends the workers and leaves no file; the
    workers ignore SIGINT, this process handles it.

    Raises:
        ValueError: ``episodes`` or ``workers`` < 1; with ``workers > 1``, ``env_kwargs`` or
            ``expert_factory`` cannot be pickled.
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        RuntimeError: with ``only_success``, the expert failed too often (20x ``episodes``
            attempts did not give enough successes); the env or expert failed (the message
            holds the worker's traceback), or a worker process died.
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
    max_attempts = 20 * episodes + workers

    start = time.perf_counter()
    selection = _Selection(episodes, only_success)
    returns: dict[int, float] = {}
    lengths: dict[int, int] = {}
    with _deferred_interrupt() as check_interrupt:
        pool: _LocalWorker | _ProcessWorkers
        if workers == 1:
            pool = _LocalWorker(env_id, kwargs, expert_factory, seed)
        else:
            pool = _ProcessWorkers(env_id, kwargs, expert_factory, seed, workers)
        completed = False
        try:
            with _atomic_h5(out) as handle, progress_bar(progress, env_id, episodes) as bar:
                staging = handle.create_group("staging")
                stepping_since = time.perf_counter()  # steps/s excludes worker start-up
                env_steps = 0
                next_index = 0  # handed out in index order, to whichever worker has room
                while (chosen := selection.chosen()) is None:
                    check_interrupt()
                    # Keep every worker's queue full: it plays on while this process writes.
                    while pool.in_flight < pool.capacity and (
                        next_index < max_attempts if only_success else next_index < episodes
                    ):
                        pool.submit(next_index)
                        next_index += 1
                    if pool.in_flight == 0:  # only_success, and every allowed attempt is done
                        n_ok = sum(selection.finished.values())
                        raise RuntimeError(
                            f"the expert succeeded in {n_ok} of {len(selection.finished)} "
                            f"episodes of {env_id}; {episodes} successful demos were asked for"
                        )
                    for episode in pool.wait():  # written as they arrive, in any order
                        index, success = int(episode["index"]), bool(episode["success"])
                        env_steps += int(episode["actions"].shape[0])
                        selection.finished[index] = success
                        if selection.wanted(index, success):
                            group = staging.create_group(str(index))
                            _write_episode(group, episode, seed + index)
                            returns[index] = float(np.sum(episode["rewards"]))
                            lengths[index] = int(episode["actions"].shape[0])
                        bar(selection)
                        check_interrupt()  # after every episode, not every batch of them
                stepping_seconds = time.perf_counter() - stepping_since
                data = handle.create_group("data")
                for demo_id, index in enumerate(chosen):
                    handle.move(f"staging/{index}", f"data/demo_{demo_id}")
                del handle["staging"]  # episodes written but not chosen (only_success extras)
                total = int(sum(lengths[i] for i in chosen))
                data.attrs["env_args"] = json.dumps(env_args)
                data.attrs["total"] = total
                data.attrs["swan_format_version"] = SWAN_FORMAT_VERSION
                check_interrupt()  # the last moment a Ctrl-C still prevents the file
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
    "collect_demos",
    "load_demos",
    "validate_demo_file",
]

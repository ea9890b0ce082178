"""The expert-episode player behind ``collect_demos``, in-process or in a worker process.

A worker process is a fresh interpreter (``python -c WORKER_CODE``), never a fork of a parent
that may hold torch, threads or GL contexts, and it imports only this module, numpy,
gymnasium and what making the env needs (mujoco, the env's package; ``swan_policy.envs`` for a
flat-Box env): no torch, no h5py, so it starts in about half a second.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import queue
import threading
import traceback
from collections.abc import Callable
from multiprocessing import connection as mp_connection
from typing import Any

import gymnasium as gym
import numpy as np

ExpertFactory = Callable[[gym.Env[Any, Any]], Callable[[Any], np.ndarray]]

MAX_EPISODE_STEPS = 10_000  # a guard against envs without a time limit

# Run in each worker process: ignore Ctrl-C first (the parent handles it and ends the
# workers), take the parent's sys.path (so an expert factory from any module unpickles),
# serve on the inherited socket, then leave without the interpreter's slow teardown.
WORKER_CODE = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "import json, os, sys; sys.path[:] = json.loads(sys.argv[1])\n"
    "from swan_policy.data._demo_worker import worker_main\n"
    "code = worker_main(int(sys.argv[2])); sys.stdout.flush(); sys.stderr.flush()\n"
    "os._exit(code)\n"
)

# Per worker process: one renderer/BLAS thread (the workers are the parallelism; llvmpipe's
# own threads only add hand-offs at 64x64). A value the user set is kept.
WORKER_ENV_DEFAULTS = {
    "LP_NUM_THREADS": "0",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def play_episode(
    env: gym.Env[Any, Any], expert: Callable[[Any], np.ndarray], index: int, seed: int
) -> dict[str, Any]:
    """Play episode ``index`` (reset with ``seed + index``) with the expert, in this process.

    An episode's content depends on its index only (the expert notices the reset), not on which
    worker plays it or what that worker played before. Returns ``index``, ``obs`` (key ->
    stacked array), ``actions``, ``rewards`` and ``success``.
    """
    obs, info = env.reset(seed=seed + index)
    frames: dict[str, list[np.ndarray]] = {key: [] for key in obs}
    actions: list[np.ndarray] = []
    rewards: list[float] = []
    done = False
    while not done and len(actions) < MAX_EPISODE_STEPS:
        action = np.asarray(expert(obs), dtype=np.float32)
        for key, value in obs.items():
            frames[key].append(np.array(value))
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
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


def make_env_and_expert(
    env_id: str, env_kwargs: dict[str, Any], expert_factory: ExpertFactory | None
) -> tuple[gym.Env[Any, Any], Callable[[Any], np.ndarray]]:
    """``gym.make(env_id, **env_kwargs)`` and its expert (default ``swan_envs`` experts).

    As in ``swan_policy.envs.make_env``, a flat ``Box`` observation (``InvertedPendulum-v5``)
    becomes ``{"proprio": obs}``, the layout the demo file and the policies use.
    """
    namespace = env_id.split("/", 1)[0] if "/" in env_id else None
    if namespace and env_id not in gym.registry:
        # Import the package that registers the id in this process (e.g. swan_envs).
        with contextlib.suppress(ImportError):
            importlib.import_module(namespace)
    env = gym.make(env_id, **env_kwargs)
    box = env.observation_space
    if isinstance(box, gym.spaces.Box) and len(box.shape) == 1:
        from swan_policy.envs import StateAsProprio  # torch-free, like this module

        env = StateAsProprio(env)
    return env, (expert_factory or _default_expert_factory)(env)


def worker_main(fd: int) -> int:
    """A worker process: make the env and expert, then play the episodes the parent sends.

    Messages from the parent: the config dict, then episode indices, then ``None`` (or EOF) to
    stop. Messages to the parent: ``("ready", pid)``, then ``("episode", dict)`` per index, or
    ``("error", traceback)``. A sender thread ships finished episodes, so the next episode
    starts at once even while the parent is busy writing and not reading. Returns the exit
    code.
    """
    conn = mp_connection.Connection(fd)
    outbox: queue.Queue[tuple[str, Any] | None] = queue.Queue()
    lost = threading.Event()

    def send_loop() -> None:
        while (item := outbox.get()) is not None:
            try:
                conn.send(item)
            except OSError:  # the parent is gone: nobody wants the episodes
                lost.set()
                os._exit(1)

    sender = threading.Thread(target=send_loop, name="demo-sender", daemon=True)
    sender.start()
    env = None
    code = 0
    try:
        config = conn.recv()
        env, expert = make_env_and_expert(
            config["env_id"], config["env_kwargs"], config["expert_factory"]
        )
        outbox.put(("ready", os.getpid()))
        while (index := conn.recv()) is not None:
            outbox.put(("episode", play_episode(env, expert, index, config["seed"])))
    except (EOFError, OSError):
        pass  # the parent closed its end
    except Exception:
        outbox.put(("error", traceback.format_exc()))
        code = 1
    finally:
        outbox.put(None)
        sender.join()
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()
        conn.close()
    return 1 if lost.is_set() else code

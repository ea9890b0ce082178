"""Training checkpoints: safetensors + JSON, written atomically, with a ``last`` pointer.

Layout (DESIGN.md §8)::

    runs/<name>/checkpoints/step_<n>/model.safetensors       policy weights
                                     config.json             policy config
                                     optimizer.safetensors   optimiser tensors
                                     trainer_state.json      step, param groups, RNG, extras
    runs/<name>/checkpoints/last                             text: "step_<n>"

A checkpoint is written into a hidden temp directory and renamed into place (atomic on
one filesystem); only then is ``last`` replaced (atomically). A crash or SIGKILL at any
moment leaves the previous checkpoint intact and ``last`` pointing at a complete one;
leftover temp directories (and a temp file of ``last``) are removed by the next save or
load (tests/reliability/test_crash_safety.py kills a real ``swan train`` mid-write). A
re-save of a step that exists (the end of a run right after a periodic save) replaces
that checkpoint's files one by one, each atomically, so it is complete at every moment.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from swan_policy.policy import SwanPolicy
from swan_policy.serialization import (
    CheckpointError,
    atomic_write,
    fsync_dir,
    load_json,
    load_tensors,
    save_json,
    save_tensors,
)

LAST = "last"
TMP_PREFIX = ".tmp-"


@dataclass
class TrainerState:
    """Everything besides weights that a resumed run needs to continue identically."""

    step: int = 0
    epoch: int = 0
    best_metric: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """RNG streams of torch, numpy's legacy global generator and ``random``."""
    tensors = {"rng.torch": torch.get_rng_state()}
    # The legacy global stream: SB3's set_random_seed and older helpers draw from it.
    np_state = np.random.get_state(legacy=True)  # noqa: NPY002  (that legacy stream)
    assert isinstance(np_state, tuple)  # legacy=True: (name, keys, pos, has_gauss, gauss)
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": _to_json(random.getstate()),
    }
    return tensors, meta


def restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))  # noqa: NPY002  (same)
    random.setstate(_from_json(meta["python"]))


def _to_json(obj: Any) -> Any:
    return [_to_json(x) for x in obj] if isinstance(obj, tuple | list) else obj


def _from_json(obj: Any) -> Any:
    return tuple(_from_json(x) for x in obj) if isinstance(obj, list) else obj


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    policy: SwanPolicy,
    optimizer: torch.optim.Optimizer | None,
    state: TrainerState,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    extra: Callable[[Path], None] | None = None,
    rank_rng: Sequence[tuple[dict[str, Tensor], dict[str, Any]]] = (),
) -> Path:
    """Write ``checkpoints/step_<n>`` atomically, then move ``last`` to it.

    ``extra(tmp_dir)`` writes further files into the checkpoint before it is moved into
    place (RL runs: the SB3 model's tensors, VecNormalize statistics).

    ``rank_rng``: in a distributed run, every rank's :func:`capture_rng` (from
    :func:`gather_rng`; entry 0 is this process's), so that each rank resumes its own
    random streams (its batches, shifts and budgets) rather than rank 0's.
    """
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_temp_dirs(ckpt_root)
    final = ckpt_root / f"step_{state.step}"
    tmp = ckpt_root / f"{TMP_PREFIX}step_{state.step}-{os.getpid()}"
    tmp.mkdir()
    try:
        policy.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
        rng_tensors, rng_meta = capture_rng()
        for r, (r_tensors, r_meta) in enumerate(rank_rng):
            if r > 0:  # rank 0's streams are this process's, saved as usual
                rng_tensors |= {f"rng.rank{r}.{k[4:]}": v for k, v in r_tensors.items()}
                rng_meta = {**rng_meta, f"rank{r}": r_meta}
        opt_tensors: dict[str, Tensor] = {}
        opt_meta: dict[str, Any] | None = None
        if optimizer is not None:
            opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        save_tensors(tmp / "optimizer.safetensors", {**opt_tensors, **rng_tensors})
        save_json(
            tmp / "trainer_state.json",
            {
                "step": state.step,
                "epoch": state.epoch,
                "best_metric": state.best_metric,
                "extras": state.extras,
                "optimizer": opt_meta,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_meta,
            },
        )
        if final.is_dir():  # re-saving the same step (the end of a run, Ctrl-C, a resume)
            _replace_files(tmp, final)
        else:
            os.replace(tmp, final)
        fsync_dir(ckpt_root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write(ckpt_root / LAST, lambda p: p.write_text(final.name + "\n"))
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``last`` points to, or None if the run has none.

    Raises:
        CheckpointError: ``last`` is not a checkpoint name (``step_<n>``; nothing outside
            the checkpoints directory) or names an incomplete checkpoint.
    """
    pointer = run_dir / "checkpoints" / LAST
    if not pointer.is_file():
        return None
    name = pointer.read_bytes().decode("utf-8", errors="replace").strip()
    if not re.fullmatch(r"step_\d+", name):
        raise CheckpointError(
            f"{pointer}: expected a checkpoint name like 'step_100', got {name[:60]!r}"
        )
    target = run_dir / "checkpoints" / name
    if not (target / "trainer_state.json").is_file():
        raise CheckpointError(f"{pointer}: points to {target.name}, which is incomplete")
    return target


@dataclass
class Checkpoint:
    """A loaded checkpoint; optimiser/scheduler states are applied by the caller."""

    policy: SwanPolicy
    state: TrainerState
    optimizer_state: dict[str, Any] | None
    scheduler_state: dict[str, Any] | None
    rng_tensors: dict[str, Tensor]
    rng_meta: dict[str, Any]

    def restore_rng(self, rank: int = 0) -> bool:
        """Restore the random streams saved for ``rank`` (0: the saving process's).

        Returns False, changing nothing, when the checkpoint holds none for that rank
        (saved by a single process, or by fewer ranks than resume it).
        """
        if rank == 0:
            restore_rng(self.rng_tensors, self.rng_meta)
            return True
        prefix = f"rng.rank{rank}."
        tensors = {
            f"rng.{k[len(prefix) :]}": v
            for k, v in self.rng_tensors.items()
            if k.startswith(prefix)
        }
        meta = self.rng_meta.get(f"rank{rank}")
        if not tensors or meta is None:
            return False
        restore_rng(tensors, meta)
        return True


def gather_rng() -> list[tuple[dict[str, Tensor], dict[str, Any]]]:
    """Every rank's :func:`capture_rng`, in rank order, on every rank (a collective:
    all ranks must call it). Outside a distributed job: this process's alone."""
    mine = capture_rng()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def load_checkpoint(ckpt: Path) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` (nothing global is changed).

    Raises:
        CheckpointError: a file is missing, malformed or does not fit.
    """
    _remove_temp_dirs(ckpt.parent)
    policy = SwanPolicy.from_pretrained(ckpt)
    meta = load_json(ckpt / "trainer_state.json")
    tensors = load_tensors(ckpt / "optimizer.safetensors")
    try:
        state = TrainerState(
            int(meta["step"]), int(meta["epoch"]), meta["best_metric"], dict(meta["extras"])
        )
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("state.")}
        opt_state = None
        if meta["optimizer"] is not None:
            opt_state = _unflatten_optimizer(opt_tensors, meta["optimizer"])
        rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
        return Checkpoint(policy, state, opt_state, meta["scheduler"], rng, dict(meta["rng"]))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{ckpt}: trainer state does not fit ({e!r})") from None


def _replace_files(src: Path, dst: Path) -> None:
    """Move ``src``'s files over ``dst``'s one at a time, ``trainer_state.json`` last.

    A re-save of step ``n`` cannot swap the directory that ``last`` may point to: between
    removing the old ``step_<n>`` and renaming the new one into place, ``last`` would name
    nothing. Each file is replaced atomically instead, so ``step_<n>`` stays complete at
    every moment; a kill half-way leaves some files of each save, both of the same step
    (no update runs between them: the same weights, optimiser and data).
    """
    files = sorted(src.iterdir(), key=lambda f: f.name == "trainer_state.json")
    for f in files:
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(f, dst / f.name)
    fsync_dir(dst)


def _remove_temp_dirs(ckpt_root: Path) -> None:
    """Remove what a killed save left: temp checkpoint dirs and the pointer's temp file."""
    if ckpt_root.is_dir():
        for p in ckpt_root.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True)
        for p in ckpt_root.glob(f".{LAST}.*.tmp"):  # atomic_write's temp file for `last`
            p.unlink(missing_ok=True)


_VERSIONED = ("torch", "numpy", "mujoco", "gymnasium", "stable-baselines3", "swan-policy")


def start_record(
    step: int, resumed: bool, seed: int, world_size: int, device: torch.device, compile: bool
) -> dict[str, Any]:
    """What a (re)start of training ran on, for ``metrics.jsonl`` (``kind: start``).

    The same seed reproduces a run bitwise only with the same package versions and thread
    count (docs/results.md), so every start records them beside the step it started from.
    """
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name in _VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "step": step,
        "kind": "start",
        "resumed": resumed,
        "seed": seed,
        "world_size": world_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "compile": compile,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


# ----------------------------------------------------------------------------- training time
# The benchmarks (scripts/bench_imitation.py, scripts/bench_tradeoff.py) report each run's
# training minutes; a run resumed after an interruption adds up its segments.
SEGMENT = "bench_segment.json"  # when the current training segment started, and time before it


def start_segment(run_dir: Path, minutes_before: float = 0.0) -> None:
    """Record that a training segment starts now, after ``minutes_before`` of training."""
    run_dir.mkdir(parents=True, exist_ok=True)
    segment = {"minutes_before": minutes_before, "started": time.time()}
    (run_dir / SEGMENT).write_text(json.dumps(segment))


def minutes_so_far(run_dir: Path) -> float:
    """Training minutes of an unfinished run, for resuming it.

    Each segment runs from its start (:func:`start_segment`; for a run started before that
    file existed, the first ``config.yaml`` write) to the run's last log line (the mtime of
    ``metrics.jsonl``). Work after the last log line is lost on an interruption anyway: the
    run resumes from its last checkpoint.
    """
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return 0.0
    seg = run_dir / SEGMENT
    if seg.is_file():
        saved = json.loads(seg.read_text())
        before, started = float(saved["minutes_before"]), float(saved["started"])
    else:
        before, started = 0.0, (run_dir / "config.yaml").stat().st_mtime
    return before + max(0.0, metrics.stat().st_mtime - started) / 60

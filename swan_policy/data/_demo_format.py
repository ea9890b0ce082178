"""Reading and checking demo files (the private half of ``swan_policy.data.demos``).

Every problem becomes a ``DemoFileError`` that names the file and the exact dataset, e.g.
``data/demo_3/actions has 49 rows but obs/pixels has 50``. h5py never unpickles; datasets of
Python objects or strings are refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SWAN_FORMAT_VERSION = 1
_DEMO_NAME = re.compile(r"^demo_(\d+)$")


class DemoFileError(ValueError):
    """A demo file is missing, not HDF5, or does not have the expected layout."""


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


def _fail(path: Path, message: str) -> DemoFileError:
    return DemoFileError(f"{path}: {message}")


def _check_numeric(path: Path, name: str, array: np.ndarray, kinds: str, what: str) -> None:
    if array.dtype.kind not in kinds:
        raise _fail(path, f"{name} has dtype {array.dtype}, expected {what}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        rows = np.atleast_1d(array)  # a scalar dataset has no rows to index
        bad = int(np.argmax(~np.isfinite(rows).reshape(rows.shape[0], -1).all(axis=1)))
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
            # (N, 3, 84, 84) passes the channel-count rule (84 = 3 x 28): channels first
            chw = array.shape[1] in (1, 3) and array.shape[-1] > 4
            if chw or (array.shape[-1] % 3 != 0 and array.shape[-1] != 1):
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


def read_demo_file(path: Path) -> tuple[DemoFileInfo, list[dict[str, Any]]]:
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


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _check_declared_size(path: Path, data: h5py.Group, names: list[str]) -> None:
    """Refuse, before reading, datasets whose declared shapes exceed this machine's memory.

    A few-KB file can declare a dataset of terabytes (chunked storage, never written);
    reading it would fail with an allocation error or be killed for memory.
    """
    limit = memory_bytes()
    if limit is None:
        return
    sizes: list[tuple[int, str, h5py.Dataset]] = []
    for name in names:
        demo = data[name]
        if not isinstance(demo, h5py.Group):
            continue

        def visit(sub: str, item: object, where: str = f"data/{name}") -> None:
            if isinstance(item, h5py.Dataset):
                sizes.append((int(item.size) * item.dtype.itemsize, f"{where}/{sub}", item))

        demo.visititems(visit)
    total = sum(n for n, _, _ in sizes)
    if total > limit:
        n, where, item = max(sizes, key=lambda s: s[0])
        raise _fail(
            path,
            f"its datasets declare {_gib(total)} in memory, more than this machine has "
            f"({_gib(limit)}); the largest is {where}, {item.dtype} {item.shape} ({_gib(n)})",
        )


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
        # what training compares with its own env (robomimic: env_name, type, env_kwargs)
        for key, kind, what in (("env_name", str, "a string"), ("env_kwargs", dict, "an object")):
            if env_args.get(key) is not None and not isinstance(env_args[key], kind):
                raise _fail(
                    path,
                    f"data attribute env_args: {key} must be {what}, got {env_args[key]!r}",
                )
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
    _check_declared_size(path, data, [name for _, name in names])
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

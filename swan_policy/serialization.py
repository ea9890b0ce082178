"""Safe file I/O: safetensors + JSON only, atomic writes, typed errors.

No pickle anywhere in a load path (RELIABILITY.md row 1): a file is read with the
safetensors parser, which never executes code, and anything it rejects -- a pickle
renamed ``.safetensors``, a truncated file -- becomes a :class:`CheckpointError` that
names the path and the expected format.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor


class CheckpointError(ValueError):
    """A checkpoint or policy directory is missing, malformed, or does not fit."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via ``write(tmp)`` to a temp file in the same directory, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(
    path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically save tensors as safetensors (contiguous CPU copies)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=metadata))


def load_tensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file, or raise :class:`CheckpointError` naming the path."""
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected a safetensors file)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({e}); swan-policy only loads "
            "safetensors weights, never pickle"
        ) from None


def save_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected a JSON file)")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def check_state_dict(
    expected: Mapping[str, Tensor], got: Mapping[str, Tensor], source: Path
) -> None:
    """Strict key and shape check; the error lists every missing/extra/misshapen key."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = sorted(
        f"{k} (expected {tuple(expected[k].shape)}, got {tuple(got[k].shape)})"
        for k in set(expected) & set(got)
        if expected[k].shape != got[k].shape
    )
    dtypes = sorted(
        f"{k} (expected {expected[k].dtype}, got {got[k].dtype})"
        for k in set(expected) & set(got)
        if expected[k].dtype != got[k].dtype and expected[k].shape == got[k].shape
    )
    if missing or extra or shapes or dtypes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected keys: {', '.join(extra)}")
        if shapes:
            parts.append(f"wrong shapes: {', '.join(shapes)}")
        if dtypes:
            parts.append(f"wrong dtypes: {', '.join(dtypes)}")
        raise CheckpointError(f"{source}: weights do not fit the config; " + "; ".join(parts))

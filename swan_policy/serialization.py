"""Safe file I/O: safetensors + JSON only, atomic writes, typed errors.

No pickle anywhere in a load path (RELIABILITY.md row 1): a file is read with the
safetensors parser, which never executes code, and anything it rejects -- a pickle
renamed ``.safetensors``, a truncated file -- becomes a :class:`CheckpointError` that
names the path and the expected format. safetensors has no checksum of its own, so
:func:`save_tensors` records the SHA-256 of the tensor data in the header's metadata
(``swan.sha256``) and :func:`load_tensors` refuses a file whose data no longer matches
it (row 2: a flipped byte would otherwise load as silently wrong weights).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

SHA256_KEY = "swan.sha256"  # safetensors metadata: SHA-256 of the file's tensor data


class CheckpointError(ValueError):
    """A checkpoint or policy directory is missing, malformed, or does not fit."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write via ``write(tmp)`` to a temp file in the same directory, fsync, rename, fsync
    the directory.

    The temp file is created with the umask's permissions (``mkstemp``'s 0600 would
    make every checkpoint unreadable to the user's group).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power loss
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """fsync a directory, making a rename or a new entry in it durable (skipped where the
    filesystem does not allow it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _data_section(blob: bytes) -> bytes:
    """The tensor bytes of a safetensors blob (after the length prefix and the header)."""
    return blob[8 + int.from_bytes(blob[:8], "little") :]


def tensors_hash(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of the tensors' safetensors data section (what :func:`save_tensors` stores)."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return hashlib.sha256(_data_section(save(data))).hexdigest()


def save_tensors(
    path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically save tensors as safetensors (contiguous CPU copies) with a data checksum."""
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # the data section does not depend on the metadata: hash it, then serialise with it
    digest = tensors_hash(data)
    blob = save(data, metadata={**(metadata or {}), SHA256_KEY: digest})
    atomic_write(path, lambda tmp: tmp.write_bytes(blob))


def load_tensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file, or raise :class:`CheckpointError` naming the path.

    Files written by :func:`save_tensors` carry the SHA-256 of their tensor data; a
    mismatch (a corrupted file) is refused. Files from other tools load unchecked.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected a safetensors file)")
    try:
        blob = path.read_bytes()
        tensors = load(blob)
        header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    # KeyError / TypeError: a dtype the parser accepts but this torch cannot hold (F8_E8M0)
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{path}: not a valid safetensors file ({e}); swan-policy only loads "
            "safetensors weights, never pickle"
        ) from None
    expected = (header.get("__metadata__") or {}).get(SHA256_KEY)
    if expected is not None and hashlib.sha256(_data_section(blob)).hexdigest() != expected:
        raise CheckpointError(
            f"{path}: tensor data does not match the SHA-256 in its header (the file is corrupted)"
        )
    return tensors


def save_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def load_json(path: Path) -> Any:
    """Parse a JSON file, or raise :class:`CheckpointError` naming the path.

    Damaged or hostile files (binary, an unreadable file, a 5000-digit number, nesting
    deep enough to exhaust the parser's recursion) are refused the same way.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found (expected a JSON file)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, ...
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

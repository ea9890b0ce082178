"""Observation contract shared by the torch policy and the torch-free deploy runtime.

numpy only: ``swan_policy.deploy`` imports this module on robots without torch.
Observation keys are defined here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

PIXELS = "pixels"
PROPRIO = "proprio"
OBS_KEYS = (PIXELS, PROPRIO)


class ObservationError(ValueError):
    """An observation does not match the policy's observation spec."""


@dataclass(frozen=True)
class ArraySpec:
    """Shape (without batch axis) and dtype of one observation entry.

    ``uint8`` entries (images) must be ``uint8`` exactly; float entries accept any
    floating dtype (cast to float32 without touching the caller's array).
    """

    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ArraySpec:
        return cls(tuple(int(s) for s in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class ObsSpec:
    """The observation dict a policy accepts: ``{key: ArraySpec}``."""

    entries: Mapping[str, ArraySpec]

    def validate(self, obs: Mapping[str, Any], batched: bool = False) -> dict[str, np.ndarray]:
        """Check keys, shapes, dtypes and finiteness; return arrays ready for a model.

        Args:
            obs: the observation (one step, or a batch with ``batched=True``).
            batched: whether arrays carry a leading batch axis.

        Returns:
            Arrays ready for ``torch.from_numpy``: float entries as new float32 arrays,
            uint8 entries as given when C-contiguous and writeable, else a contiguous
            copy; the caller's arrays are never mutated.

        Raises:
            ObservationError: naming the key and expected vs actual.
        """
        if not isinstance(obs, Mapping):
            raise ObservationError(
                f"observation must be a dict with keys {sorted(self.entries)}, "
                f"got {type(obs).__name__}"
            )
        missing = sorted(set(self.entries) - set(obs))
        extra = sorted(set(obs) - set(self.entries))
        if missing or extra:
            raise ObservationError(
                f"observation keys: expected {sorted(self.entries)}, missing {missing}, "
                f"unexpected {extra}"
            )
        out: dict[str, np.ndarray] = {}
        batch: int | None = None
        for key, spec in self.entries.items():
            value = obs[key]
            if not isinstance(value, np.ndarray):
                raise ObservationError(
                    f"observation[{key!r}]: expected a numpy array, got {type(value).__name__}"
                )
            shape = value.shape[1:] if batched else value.shape
            if batched:
                if value.ndim == 0:
                    raise ObservationError(f"observation[{key!r}]: missing batch axis")
                if batch is not None and value.shape[0] != batch:
                    raise ObservationError(
                        f"observation[{key!r}]: batch size {value.shape[0]} != {batch}"
                    )
                batch = value.shape[0]
            if tuple(shape) != spec.shape:
                hint = ""
                if len(spec.shape) == 3 and tuple(shape) == (spec.shape[2], *spec.shape[:2]):
                    hint = " (looks like CHW; expected HWC)"
                raise ObservationError(
                    f"observation[{key!r}]: expected shape {spec.shape}, got {tuple(shape)}{hint}"
                )
            if spec.dtype == "uint8":
                if value.dtype != np.uint8:
                    raise ObservationError(
                        f"observation[{key!r}]: expected dtype uint8, got {value.dtype}"
                    )
                # as is when C-contiguous and writeable (no copy per step); a flipped
                # or cropped view (negative or gapped strides) or a read-only buffer is
                # copied, since torch.from_numpy takes neither
                ok = value.flags.c_contiguous and value.flags.writeable
                out[key] = value if ok else np.array(value, order="C")
            else:
                if not np.issubdtype(value.dtype, np.floating):
                    raise ObservationError(
                        f"observation[{key!r}]: expected a float dtype ({spec.dtype}), "
                        f"got {value.dtype}"
                    )
                # a copy: never mutate the caller's array. A float64 beyond float32's range
                # becomes inf (refused below) -- without numpy's overflow warning each step.
                with np.errstate(over="ignore", invalid="ignore"):
                    arr = value.astype(np.float32)
                if not np.isfinite(arr).all():
                    raise ObservationError(f"observation[{key!r}]: contains NaN or Inf")
                out[key] = arr
        return out

    def to_json(self) -> dict[str, Any]:
        return {k: v.to_json() for k, v in self.entries.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ObsSpec:
        return cls({k: ArraySpec.from_json(v) for k, v in d.items()})

"""Argument checks shared by the schedulers (standard library only: the deploy runtime
imports them)."""

from __future__ import annotations

import math
import numbers
from typing import Any


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _check_fraction(name: str, value: Any) -> None:
    if not _is_number(value):
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name}: must be in (0, 1], got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if not _is_number(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not (float(value) > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name}: must be finite and > 0, got {value!r}")

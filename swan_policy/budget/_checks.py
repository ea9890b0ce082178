"""Argument checks shared by the schedulers (standard library only: the deploy runtime
imports them)."""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _is_finite(value: Any) -> bool:
    """A real number (not a bool) that is finite; an int too large for a float is not."""
    if not _is_number(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (an int, numpy's too, or a float
    such as ``5.0``), else None."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if _is_finite(value) and float(value).is_integer():
        return int(value)
    return None


def _check_fraction(name: str, value: Any) -> None:
    if not _is_number(value):
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
    if not (_is_finite(value) and 0.0 < float(value) <= 1.0):
        raise ValueError(f"{name}: must be in (0, 1], got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if not _is_number(value):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not (_is_finite(value) and float(value) > 0.0):
        raise ValueError(f"{name}: must be finite and > 0, got {value!r}")


def _check_finite(name: str, value: Any) -> None:
    if not _is_finite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")


def _check_count(name: str, value: Any) -> int:
    """An integer >= 1 (a Python or numpy int; not a bool, not a float), as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if int(value) > sys.maxsize:  # deque(maxlen=...) takes no more
        raise ValueError(f"{name}: must be at most {sys.maxsize}, got {value!r}")
    return int(value)

"""Fixtures of the reliability tests (the tiny demo file and run are in tests/conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def run_copy(reference_run: Path, tmp_path: Path) -> Path:
    """A private copy of the reference run, free to damage."""
    dst = tmp_path / "run"
    shutil.copytree(reference_run, dst)
    return dst

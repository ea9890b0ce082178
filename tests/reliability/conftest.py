"""Fixtures of the reliability tests: one tiny demo file and one finished tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.reliability._runs import tiny_train


@pytest.fixture(scope="session")
def demos16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three scripted Reach-v0 episodes at 16x16 (collected in this process)."""
    from swan_policy.data.demos import collect_demos

    path = tmp_path_factory.mktemp("demos") / "reach16.hdf5"
    collect_demos(
        "swan_envs/Reach-v0",
        3,
        path,
        workers=1,
        seed=0,
        env_kwargs={"width": 16, "height": 16},
        progress=False,
    )
    return path


@pytest.fixture(scope="session")
def reference_run(demos16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_train(demos16)`` run to the end, never interrupted. Read-only: copy it."""
    from swan_policy.cli import main
    from swan_policy.train.checkpoint import latest_checkpoint

    run = tmp_path_factory.mktemp("reference") / "run"
    assert main([*tiny_train(demos16), "--run-dir", str(run), "--quiet"]) == 0
    assert latest_checkpoint(run) == run / "checkpoints" / "step_6"
    return run


@pytest.fixture
def run_copy(reference_run: Path, tmp_path: Path) -> Path:
    """A private copy of the reference run, free to damage."""
    dst = tmp_path / "run"
    shutil.copytree(reference_run, dst)
    return dst

"""Crash safety of ``swan train``: real processes, really killed (RELIABILITY.md rows 6-8).

A subprocess runs the real CLI (``tests/reliability/_crash_child.py``) with a pause
injected at a chosen point of the checkpoint writer, so the kill lands at the same
place every run: no fixed sleeps, no races. Every run is tiny (16x16 images, a few steps).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from swan_policy.cli import main
from swan_policy.policy import SwanPolicy
from swan_policy.serialization import load_tensors
from swan_policy.train.checkpoint import latest_checkpoint, load_checkpoint
from tests.reliability._runs import REPO, tiny_train

CHILD = str(Path(__file__).with_name("_crash_child.py"))
WAIT_S = 180.0  # generous: CI machines may be loaded; nothing is asserted about speed

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="process-group checks read /proc (Linux)"
)


def _start(phase: str, call: int, marker: Path, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, CHILD, phase, str(call), str(marker), "--", *argv],
        cwd=REPO,
        # one torch thread, as in this process (conftest): bit-equal to in-process runs
        env=dict(os.environ, MUJOCO_GL="egl", OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C goes to the whole group
    )


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"child exited ({proc.returncode}) before {path.name}: {err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} never appeared")
        time.sleep(0.05)


def _group(pgid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) processes of a process group: ``(pid, command line)``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            rest = (d / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(rest[2]) == pgid and rest[0] != "Z":
            out.append((int(d.name), cmd))
    return out


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Clean-up whatever happened: no process of the test may outlive it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        proc.communicate()


def _temp_entries(run: Path) -> list[str]:
    return sorted(
        str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name or "tmp-" in p.name
    )


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    """Row 8: weights, optimiser moments, step counter and RNG streams all identical."""
    pa, pb = SwanPolicy.from_pretrained(a), SwanPolicy.from_pretrained(b)
    assert pa.config == pb.config
    for (k, x), y in zip(pa.state_dict().items(), pb.state_dict().values(), strict=True):
        assert torch.equal(x, y), k
    oa, ob = load_tensors(a / "optimizer.safetensors"), load_tensors(b / "optimizer.safetensors")
    assert oa.keys() == ob.keys() and "rng.torch" in oa
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    sa = json.loads((a / "trainer_state.json").read_text())
    sb = json.loads((b / "trainer_state.json").read_text())
    assert sa == sb  # step, scheduler, numpy + python RNG states, extras


@pytest.mark.parametrize(
    ("phase", "leftover"),
    [
        ("files", ".tmp-step_4-"),  # half-written temp directory (no trainer_state.json)
        ("pointer", ".last."),  # step_4 in place, the new `last` still a temp file
    ],
)
def test_sigkill_during_checkpoint_write_keeps_last_complete_and_resumes_exactly(
    demos16: Path, reference_run: Path, tmp_path: Path, phase: str, leftover: str
) -> None:
    """Row 6 (and row 8 through a crash): SIGKILL in the middle of writing the step-4
    checkpoint leaves step_2 intact with `last` on it; resuming cleans the temp files
    and ends bit-identical to the run that was never killed."""
    run, marker = tmp_path / "run", tmp_path / "paused"
    argv = [*tiny_train(demos16), "--run-dir", str(run), "--quiet"]
    proc = _start(phase, 2, marker, argv)  # the 2nd write of that kind: checkpoint step_4
    try:
        _wait_for(marker, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=WAIT_S)
    finally:
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    ckpts = run / "checkpoints"
    assert (ckpts / "last").read_text() == "step_2\n"
    previous = latest_checkpoint(run)
    assert previous == ckpts / "step_2"
    left = _temp_entries(run)
    assert left and all(leftover in p for p in left), left  # the kill really was mid-write
    assert load_checkpoint(previous).state.step == 2  # complete and loadable
    # resume: continues from step_2 and reaches the same end as the straight run
    assert main([*argv, "--resume"]) == 0
    assert latest_checkpoint(run) == ckpts / "step_6"
    assert _temp_entries(run) == []
    assert sorted(p.name for p in ckpts.iterdir()) == ["last", "step_2", "step_4", "step_6"]
    _assert_same_checkpoint(reference_run / "checkpoints" / "step_6", ckpts / "step_6")


def test_ctrl_c_during_eval_workers_then_second_ctrl_c(demos16: Path, tmp_path: Path) -> None:
    """Row 7: Ctrl-C goes to the whole process group (as from a terminal) while the
    evaluation's worker processes run: they survive it, the evaluation finishes and
    closes them; a second Ctrl-C, during the checkpoint that follows, exits at once
    with a non-zero status; no process is left behind and the run resumes."""
    run, marker = tmp_path / "run", tmp_path / "eval"
    argv = [
        *tiny_train(
            demos16,
            "bc.steps=100000",
            "log.checkpoint_every=1",
            "eval.every=2",
            "eval.episodes=2",
            "eval.workers=2",
            "eval.budgets=[1.0]",
        ),
        "--run-dir",
        str(run),
        "--quiet",
    ]
    proc = _start("sigint-eval", 0, marker, argv)
    try:
        _wait_for(marker, proc)  # step 2: the evaluation's vector env is up
        workers = [p for p, _ in _group(proc.pid) if p != proc.pid]
        assert len(workers) >= 2, _group(proc.pid)  # env workers (+ the forkserver)
        os.killpg(proc.pid, signal.SIGINT)
        _wait_for(marker.with_suffix(".save"), proc)  # eval done, checkpointing
        # the evaluation completed with the workers that got the Ctrl-C ...
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r["kind"] == "eval"] == [2]
        # ... and closed them (multiprocessing's own helpers stay until the trainer exits)
        helpers = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")
        others = [
            c for p, c in _group(proc.pid) if p != proc.pid and not any(h in c for h in helpers)
        ]
        assert others == []
        os.killpg(proc.pid, signal.SIGINT)  # the second Ctrl-C
        _, err = proc.communicate(timeout=WAIT_S)  # the pause sleeps forever: only the
    finally:  # second Ctrl-C can end it
        _kill_group(proc)
    assert proc.returncode == 130, err  # typer turns the KeyboardInterrupt into exit 130
    assert "Traceback" not in err and "Error" not in err, err
    deadline = time.monotonic() + WAIT_S
    while _group(proc.pid) and time.monotonic() < deadline:  # the forkserver exits after us
        time.sleep(0.1)
    assert _group(proc.pid) == []
    assert latest_checkpoint(run) == run / "checkpoints" / "step_1"
    assert _temp_entries(run) == []
    resume = [*tiny_train(demos16, "bc.steps=3"), "--run-dir", str(run), "--resume", "--quiet"]
    assert main(resume) == 0
    assert latest_checkpoint(run) == run / "checkpoints" / "step_3"

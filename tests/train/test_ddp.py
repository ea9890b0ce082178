"""Multi-process behaviour cloning with torchrun (DDP, gloo on CPU), 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from swan_policy.train.checkpoint import latest_checkpoint
from tests.train.test_imitation import CONFIG, tiny


def test_torchrun_two_processes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "swan_policy.cli",
        "train", "--config", CONFIG,
        *tiny(tmp_path, "method=bc", "eval.at_end=false", "bc.steps=4", "log.log_every=1"),
        "--run-dir", str(run), "--quiet",
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert latest_checkpoint(run) == run / "checkpoints" / "step_4"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]

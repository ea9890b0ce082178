from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swan_policy.cli import main
from tests.reliability._runs import set_args, tiny_policy

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "reach_bc.yaml")
TINY = set_args(tiny_policy(hidden="[8]"))


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "swan-policy" in capsys.readouterr().out
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("info", "demos", "train", "eval", "compact", "export", "deploy"):
        assert verb in out


def test_info_prints_the_gate_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--config", CONFIG, *TINY, "--budgets", "1,0.5", "--batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layers.0" in out and "head.layers.0" in out and "MMACs" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["info", "--config", CONFIG, "--set", "policy.gate.foo=1"],
            "error: policy.gate.foo: Extra inputs are not permitted",
        ),
        (
            ["info", "--config", CONFIG, "--set", "policy.gate.tau=0"],
            "error: policy.gate.tau: Input should be greater than 0 (got 0)",
        ),
        (["info", "--config", "no/such.yaml"], "error: cannot read config no/such.yaml"),
        (
            ["info", "--config", CONFIG, "--budgets", "1,2"],
            "error: --budgets: each budget must be in (0, 1]",
        ),
        (
            ["info", "--config", CONFIG, "--mode", "fast"],
            "error: --mode: expected 'masked' or 'sparse'",
        ),
        (["info", "--bogus"], "error: No such option: --bogus"),
        (["compact", "--run", "x"], "error: --run: x is not a run directory"),
        (
            ["eval", "--run", "x", "--avg-budget", "0.4"],
            "error: --avg-budget: only used with --scheduler adaptive",
        ),
        (
            ["eval", "--run", "x", "--scheduler", "adaptive:0.4", "--deadline-ms", "5"],
            "error: --deadline-ms: only used with --scheduler deadline",
        ),
    ],
)
def test_user_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), captured.err
    assert "Traceback" not in captured.err + captured.out


def test_console_script_exit_status() -> None:
    swan = Path(sys.executable).parent / "swan"
    env = dict(os.environ, COLUMNS="200")
    bad = subprocess.run(
        [str(swan), "info", "--config", CONFIG, "--set", "seed=-1"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: seed: Input should be greater than or equal to 0 (got -1)"
    good = subprocess.run(
        [str(swan), "info", "--config", CONFIG, *TINY, "--batch", "2"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert good.returncode == 0, good.stderr


def test_resume_records_changed_settings_and_refuses_another_architecture(
    reference_run: Path, demos16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resuming a run keeps its architecture (the checkpoint's): a config whose policy
    differs is refused, writing nothing; other changes, such as more steps, train and are
    recorded in the start line of ``metrics.jsonl``."""
    import json
    import shutil

    from tests.reliability._runs import tiny_train, tree_digest

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = tree_digest(run)
    wider = [*tiny_train(demos16, "policy.head.hidden=[12]"), "--run-dir", str(run), "--resume"]
    assert main([*wider, "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "policy.head.hidden: [8] -> [12]" in err and err.count("\n") == 1
    assert tree_digest(run) == before
    longer = [*tiny_train(demos16, "bc.steps=8"), "--run-dir", str(run), "--resume", "--quiet"]
    assert main(longer) == 0
    starts = [r for r in map(json.loads, (run / "metrics.jsonl").open()) if r["kind"] == "start"]
    assert [s.get("changed") for s in starts] == [None, ["bc.steps: 6 -> 8"]]

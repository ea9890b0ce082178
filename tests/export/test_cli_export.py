"""`swan export` through the real CLI: calibration rollouts, ladder, bundle, closed loop."""

from __future__ import annotations

import json

import torch
import yaml

from swan_policy.cli import main
from swan_policy.config import load_config
from swan_policy.deploy import PolicyRuntime
from swan_policy.envs import make_env, resolve_policy_config
from swan_policy.policy import SwanPolicy

TINY = [
    "policy.encoder.channels=[4, 4]",
    "policy.encoder.strides=[2, 2]",
    "policy.head.hidden=[16]",
    "policy.head.proprio_hidden=8",
]


def _tiny_run(tmp_path, *extra):
    cfg = load_config("configs/reach_bc.yaml", [*TINY, *extra])
    env = make_env(cfg.env)
    try:
        pc = resolve_policy_config(cfg.policy, env)
    finally:
        env.close()
    torch.manual_seed(0)
    run = tmp_path / "run"
    SwanPolicy(pc).save_pretrained(run / "best")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return run


def test_swan_export_writes_a_verified_bundle(tmp_path, capsys) -> None:
    run = _tiny_run(tmp_path)
    out = tmp_path / "bundles" / "tiny"
    report = tmp_path / "export.json"
    args = ["export", "--run", str(run), "--out", str(out), "--levels", "1,0.5"]
    args += ["--calib-episodes", "2", "--eval-episodes", "1", "--workers", "1"]
    args += ["--json", str(report)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "parity asserted" in printed and "closed loop: 1 episodes per level" in printed
    assert "note: levels below 1 are static cuts" in printed  # not fine-tuned: say so
    assert (run / "ladder.json").is_file() and (out / "ladder.json").is_file()
    manifest = json.loads((out / "bundle.json").read_text())
    assert [lvl["budget"] for lvl in manifest["levels"]] == [1.0, 0.5]
    assert manifest["obs_spec"]["pixels"] == {"shape": [64, 64, 3], "dtype": "uint8"}
    data = json.loads(report.read_text())
    assert data["calibration_steps"] > 0 and set(data["closed_loop"]) == {"1", "0.5"}
    runtime = PolicyRuntime.load(out)
    assert runtime.levels == (1.0, 0.5)


def test_export_of_an_rl_run_does_not_suggest_finetune(tmp_path, capsys) -> None:
    """--finetune is refused for RL runs (no demos): the static-cut note must not offer it."""
    run = _tiny_run(tmp_path, "method=ppo")
    args = ["export", "--run", str(run), "--out", str(tmp_path / "b"), "--levels", "1,0.5"]
    assert main([*args, "--calib-episodes", "1", "--workers", "1"]) == 0
    assert "--finetune" not in capsys.readouterr().out


def test_swan_export_user_errors(tmp_path, capsys) -> None:
    run = _tiny_run(tmp_path)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "x").write_text("")
    cases = [
        (["--out", str(out)], f"error: --out: {out} exists (pass --overwrite to replace it)"),
        (["--out", str(tmp_path / "b"), "--gates", "open"], "error: --gates: expected"),
        (["--out", str(tmp_path / "b"), "--levels", "1,2"], "error: --budgets: each budget"),
        (
            ["--out", str(tmp_path / "b"), "--finetune-data", "all"],
            "error: --finetune-data: expected 'demos' or 'run', got 'all'",
        ),
    ]
    for extra, message in cases:
        assert main(["export", "--run", str(run), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err
    assert main(["export", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "c")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()

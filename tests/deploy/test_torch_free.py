"""The runtime and the deploy loop run in processes where importing torch fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from swan_policy.cli import main

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "PYTHONPATH": str(ROOT)}

IMPORT_CHECK = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
import numpy as np
from swan_policy.deploy import PolicyRuntime
runtime = PolicyRuntime.load(sys.argv[1], scheduler="adaptive:0.75")
rng = np.random.default_rng(0)
for _ in range(5):
    a = runtime.act({"pixels": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                     "proprio": rng.standard_normal(6).astype(np.float32)})
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("OK", a.shape, loaded, runtime.stats()["steps"])
"""


def test_deploy_imports_and_runs_without_torch(reach_bundle) -> None:
    path, _, _ = reach_bundle
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(path)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK (2,) ['torch'] 5"  # only the blocking sentinel


def test_blocked_torch_really_fails_to_import() -> None:
    code = "import sys\nsys.modules['torch'] = None\n"
    code += "try:\n import torch\nexcept ImportError:\n print('blocked')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "blocked"


def test_deploy_loop_runs_an_episode_in_a_torch_free_process(reach_bundle, tmp_path) -> None:
    path, _, _ = reach_bundle
    out = tmp_path / "deploy.json"
    cmd = [sys.executable, "-m", "swan_policy.deploy.loop", "--bundle", str(path)]
    cmd += ["--task", "swan_envs/Reach-v0", "--episodes", "1", "--rate", "0"]
    cmd += ["--scheduler", "fixed:0.5", "--deadline-ms", "50", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["torch_imported"] is False
    assert data["episodes"] == 1 and data["steps"] == data["episode_records"][0]["length"] > 0
    assert data["mean_budget"] == 0.5
    assert data["latency"]["levels"]["0.5"]["steps"] == data["steps"]
    assert "episode seed 10000" in proc.stderr


def test_swan_deploy_cli_prints_tables_and_json(reach_bundle, tmp_path, capsys) -> None:
    path, _, _ = reach_bundle
    out = tmp_path / "d.json"
    args = ["deploy", "--bundle", str(path), "--task", "swan_envs/Reach-v0", "--episodes", "1"]
    args += ["--rate", "200", "--deadline-ms", "50", "--json", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "latency per step" in printed and "mean budget" in printed
    data = json.loads(out.read_text())
    assert data["rate_hz"] == 200.0 and data["scheduler"]["kind"] == "deadline"


def test_swan_deploy_user_errors_are_one_line(reach_bundle, tmp_path, capfd) -> None:
    path, _, _ = reach_bundle
    missing = tmp_path / "nope"
    assert main(["deploy", "--bundle", str(missing), "--task", "swan_envs/Reach-v0"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"error: {missing}: not a bundle directory (expected bundle.json inside)"]
    # a bundle for other observations than the task's: refused before the first step
    args = ["deploy", "--bundle", str(path), "--task", "swan_envs/Push-v0", "--episodes", "1"]
    assert main(args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: observation 'proprio'")

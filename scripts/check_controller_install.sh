#!/usr/bin/env bash
# Verify the controller install documented in README.md ("Deploying on a robot"):
#
#     pip install --no-deps numpy onnxruntime <this repository or its wheel>
#
# gives a working, torch-free runtime and nothing of the training stack. Steps:
#   1. export a tiny bundle with the project's .venv (torch side);
#   2. create a throwaway venv and run exactly the documented command in it;
#   3. check the venv holds only numpy, onnxruntime and swan-policy (plus pip/setuptools),
#      that torch, gymnasium, mujoco, pydantic and stable-baselines3 are not importable,
#      and that PolicyRuntime loads the bundle and acts.
# Needs the package index (PyPI) for numpy and onnxruntime. Usage:
#     bash scripts/check_controller_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== 1. tiny bundle (torch side)"
PYTHONPATH="$ROOT" .venv/bin/python - "$TMP/bundle" <<'EOF'
import sys, warnings
warnings.filterwarnings("ignore")
import torch
from swan_policy.budget.ladder import calibrate_ladder
from swan_policy.config import PolicyConfig
from swan_policy.export.onnx import export_bundle
from swan_policy.policy import SwanPolicy

torch.manual_seed(0)
cfg = PolicyConfig(image_hw=(64, 64), image_channels=3, proprio_dim=6, action_dim=2,
                   encoder={"channels": [4, 4], "strides": [2, 2]}, head={"hidden": [16]})
policy = SwanPolicy(cfg).eval()
obs = {"pixels": torch.randint(0, 256, (16, 64, 64, 3), dtype=torch.uint8),
       "proprio": torch.randn(16, 6)}
ladder = calibrate_ladder(policy, obs, (1.0, 0.5))
export_bundle(policy, ladder, sys.argv[1])
print("bundle written")
EOF

echo "== 2. throwaway venv + the documented command"
python3 -m venv "$TMP/venv"
"$TMP/venv/bin/pip" install -q --no-deps numpy onnxruntime "$ROOT"

echo "== 3. what is installed, and the runtime without torch"
"$TMP/venv/bin/pip" list --format=freeze 2>/dev/null | tee "$TMP/freeze.txt"
extra=$(grep -viE '^(numpy|onnxruntime|swan[-_]policy|pip|setuptools|wheel)==' "$TMP/freeze.txt" || true)
if [ -n "$extra" ]; then
  echo "unexpected packages in the controller venv: $extra" >&2
  exit 1
fi
cd "$TMP"  # not the repository: import the installed package
"$TMP/venv/bin/python" - "$TMP/bundle" <<'EOF'
import importlib.util, sys
for name in ("torch", "gymnasium", "mujoco", "pydantic", "stable_baselines3", "yaml"):
    assert importlib.util.find_spec(name) is None, f"{name} is installed"
import numpy as np
from swan_policy.deploy import PolicyRuntime
runtime = PolicyRuntime.load(sys.argv[1], scheduler="adaptive:0.75", deadline_ms=5)
rng = np.random.default_rng(0)
for _ in range(100):
    action = runtime.act({"pixels": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                          "proprio": rng.standard_normal(6).astype(np.float32)})
s = runtime.stats()
print(f"runtime ok: action {action}, {s['steps']} steps, mean budget {s['mean_budget']:.2f}, "
      f"p50 {s['overall']['p50_ms']:.3f} ms")
print("swan_policy from", __import__("swan_policy").__file__)
EOF
echo "controller install: OK"

#!/usr/bin/env bash
# The test command, on a fresh machine: set up .venv, run lint, types and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy swan_policy envs/swan_envs
echo "== pytest"
.venv/bin/python -m pytest "$@"

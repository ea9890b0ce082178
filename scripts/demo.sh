#!/usr/bin/env bash
# The main job, on a fresh machine: set up .venv, then run the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
# For now: build the gated policy and show active units and MACs per layer at three
# budgets. The imitation issue replaces this with demos -> train -> eval -> export.
.venv/bin/swan info --config configs/reach_bc.yaml --budgets 1,0.5,0.25 --batch 32
.venv/bin/swan info --config configs/reach_bc.yaml --budgets 1,0.5,0.25 --batch 1 --mode sparse

#!/usr/bin/env bash
# The main job, on a fresh machine: set up .venv, then run the end-to-end demo:
# expert demos on swan_envs/Reach-v0 -> BC with the sandwich rule + DAgger -> evaluation
# at budgets 1.0 / 0.5 / 0.25. About 10-15 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export MUJOCO_GL=${MUJOCO_GL:-egl}
run=${SWAN_DEMO_RUN:-runs/demo-$(date +%Y%m%d-%H%M%S)}
echo "== swan info: the gated policy, active units and MACs per layer at three budgets"
.venv/bin/swan info --config configs/reach_bc.yaml --budgets 1,0.5,0.25 --batch 8
echo "== swan train: demos (collected once into data/), BC + DAgger -> $run"
.venv/bin/swan train --config configs/reach_bc.yaml --run-dir "$run"
echo "== swan eval: 50 episodes per budget"
.venv/bin/swan eval --run "$run" --episodes 50 --budgets 1,0.5,0.25 --json "$run/eval.json"

#!/usr/bin/env bash
# Create .venv (if missing) and install swan-policy with its dev tools into it.
#
# torch is installed first, pinned: on a CPU machine of this project's kind
# `pip install torch==2.13.0` takes a CPU build that is already on disk; on a user's
# machine it takes PyPI's default build (CUDA on Linux x86_64). Override with e.g.
#   SWAN_TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# An already-installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${SWAN_TORCH_SPEC:-torch==2.13.0}

quiet_pip() {
  # pip on some machines warns about unused local index folders; keep the output short.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing $TORCH_SPEC"
  # shellcheck disable=SC2086  # TORCH_SPEC may carry pip options
  quiet_pip $TORCH_SPEC
fi
stamp=.venv/.swan-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing swan-policy (editable) and its dependencies"
  quiet_pip -e ".[dev]"
  .venv/bin/python -c "import swan_policy, swan_envs, torch" # fail here, not later
  touch "$stamp"
fi

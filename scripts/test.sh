#!/usr/bin/env bash
# The test command: sets everything up on a fresh machine (scripts/setup_env.sh), then runs ruff,
# mypy and pytest. Extra arguments go to pytest (e.g. `-m slow` for the long statistical grid).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
venv="${TANDEM_VENV:-.venv}"
"$venv/bin/ruff" check protocol runtime workers tests scripts
"$venv/bin/mypy"
"$venv/bin/python" -m pytest -q "$@"

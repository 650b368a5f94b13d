#!/usr/bin/env bash
# The main job in one command on a fresh machine: set up .venv, then run the demo (scripts/demo.py)
# on the embedded models with configs/demo.yaml. Extra arguments go to scripts/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
"${TANDEM_VENV:-.venv}/bin/python" scripts/demo.py "$@"

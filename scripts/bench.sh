#!/usr/bin/env bash
# The benchmark from a fresh clone: set-up (scripts/setup_env.sh), the bench extra, then
# scripts/bench.py with any arguments given here (default: every method, shipped prompts, demo config).
# Results land in bench_out/ (results.json, results.md, PNG plots). Method: docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
venv="${TANDEM_VENV:-.venv}"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[bench]"
exec "$venv/bin/python" scripts/bench.py "$@"

#!/usr/bin/env bash
# Sets up everything on a fresh machine and runs the checks: a virtual environment in .venv,
# torch pinned to 2.13.0 (the CPU build; an unpinned torch pulls a multi-GB CUDA build),
# the project with its dev extra, then ruff, mypy and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TANDEM_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
"$venv/bin/ruff" check protocol runtime workers tests scripts
"$venv/bin/mypy"
"$venv/bin/python" -m pytest -q "$@"

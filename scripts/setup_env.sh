#!/usr/bin/env bash
# Creates .venv (or $TANDEM_VENV) on a fresh machine and installs Tandem into it: torch pinned to
# 2.13.0 first (the CPU build here; an unpinned torch pulls a multi-GB CUDA build), then the project
# with its dev extra. Safe to run again: what is installed already is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TANDEM_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"

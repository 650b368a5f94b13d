"""Datasets of Tandem's lm-eval tasks, read from the JSONL files next to this one (nothing from a hub).

lm-eval calls `code_lines` / `code_complete` through `custom_dataset: !function loader.<name>`.
The files are built by scripts/build_eval_tasks.py from held-out standard-library code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _read(name: str) -> Any:
    import datasets  # lm-eval's own dependency

    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def code_lines(**kwargs: Any) -> Any:
    return _read("code_lines.jsonl")


def code_complete(**kwargs: Any) -> Any:
    return _read("code_complete.jsonl")

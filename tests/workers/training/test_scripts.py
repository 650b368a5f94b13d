"""Every flag of the training and evaluation scripts is documented in the script's docstring table."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"


@pytest.mark.parametrize("name", ["train_tokenizer", "train_target", "train_drafter", "eval_drafters",
                                  "gen_distill_data", "train_hidden", "eval_hidden"])
def test_every_flag_is_in_the_docstring_table(name: str) -> None:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # importable as top-level modules, as `python scripts/x.py` runs them
    module = importlib.import_module(name)
    parser = module.build_parser()
    flags = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    assert len(flags) > 3
    missing = [f for f in flags if f != "--help" and f"`{f}`" not in (module.__doc__ or "")]
    assert not missing, f"scripts/{name}.py flags missing from its docstring table: {missing}"

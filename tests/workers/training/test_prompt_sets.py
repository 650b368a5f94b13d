"""Evaluation prompt sets: every style gives prompts of its shape, cut only from held-out files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from runtime.demo import DEMO_PROMPTS
from workers.training import prompt_sets
from workers.training.corpus import is_held_out
from workers.training.prompt_sets import STYLES, cuts_before_tests, docstring_cuts, style_prompts

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(str(REPO / "models" / "demo" / "tokenizer"))


def test_cutters_find_signatures_with_docstrings_and_test_functions() -> None:
    lines = ["class A:\n", "    def f(self,\n", "          x):\n", '        """Do f.\n', "        more\n",
             "    def g(self):\n", "        return 1\n", "def test_g():\n", "    assert A().g() == 1\n"]
    assert docstring_cuts(lines) == ['def f(self,\n      x):\n    """Do f.\n']
    assert cuts_before_tests(lines, context_lines=2) == ["    def g(self):\n        return 1\ndef test_g():\n"]


def test_the_demo_measures_the_bench_style_prompts() -> None:
    assert prompt_sets.jsonl_prompts(prompt_sets.BENCH_PROMPTS) == DEMO_PROMPTS
    assert len(prompt_sets.jsonl_prompts(prompt_sets.HANDWRITTEN_PROMPTS)) >= 15


def test_cut_prompts_come_from_held_out_files_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    real = is_held_out

    def spy(name: str) -> bool:
        held = real(name)
        if held:
            seen.append(name)
        return held
    monkeypatch.setattr(prompt_sets, "is_held_out", spy)
    calls: list[int] = []

    def cutter(lines: object) -> list[str]:
        calls.append(1)
        return ["x = 1\n"]
    picked = prompt_sets.cut_from_held_out(cutter, 5, seed=0)
    assert picked == ["x = 1\n"] * 5 and len(calls) == len(seen) > 0


@pytest.mark.parametrize("style", STYLES)
def test_every_style_gives_prompts(style: str, tokenizer: object) -> None:
    prompts = style_prompts(style, tokenizer, num_prompts=6, seed=0)
    assert len(prompts) >= 6 or style == "handwritten" or style == "bench"
    assert all(len(p) > 3 for p in prompts)
    texts = [tokenizer.decode(p) for p in prompts]  # type: ignore[attr-defined]
    if style == "docstring":
        assert all(t.lstrip().startswith(("def ", "async def ")) and ('"""' in t or "'''" in t) for t in texts)
    if style == "tests":
        assert all(re.match(r"\s*(async )?def test\w*\(", t.splitlines()[-1]) for t in texts)

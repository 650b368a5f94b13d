"""Held-out prompt sets of several styles for drafter evaluation: windows of the held-out corpus split,
hand-written snippets, the bench prompts, function signatures with a docstring opening, and test methods.
Every cut prompt comes from a held-out file (workers/training/corpus.py's rule), never from training data.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from workers.training.corpus import SOURCES, is_held_out, read_corpus, source_files
from workers.training.dataset import document_ids
from workers.training.tokens import encode_texts, held_out_prompts

REPO = Path(__file__).resolve().parents[2]
HANDWRITTEN_PROMPTS = REPO / "models" / "demo" / "handwritten_prompts.jsonl"  # incl. scripts/demo.py's PROMPTS
BENCH_PROMPTS = REPO / "runtime" / "bench" / "prompts.jsonl"
STYLES = ("stdlib", "handwritten", "bench", "docstring", "tests")

_DEF = re.compile(r"^(\s*)(async def|def) \w+\(")
_DOC_OPEN = re.compile(r'^\s*[rbu]?("""|\'\'\')')
_TEST_DEF = re.compile(r"^\s*(async def|def) test\w*\(")


def style_prompts(style: str, tokenizer: Any, num_prompts: int = 20, seed: int = 0, corpus: str = "stdlib",
                  min_tokens: int = 64, max_tokens: int = 128) -> list[list[int]]:
    """Token ids of up to `num_prompts` prompts of `style` (file-based sets give all their prompts)."""
    if style == "stdlib":
        docs = read_corpus(corpus, "held_out")
        return held_out_prompts(document_ids(tokenizer, docs), num_prompts, min_tokens, max_tokens, seed)
    if style in ("handwritten", "bench"):
        texts = jsonl_prompts(HANDWRITTEN_PROMPTS if style == "handwritten" else BENCH_PROMPTS)
    elif style == "docstring":
        texts = cut_from_held_out(docstring_cuts, num_prompts, seed)
    elif style == "tests":
        texts = cut_from_held_out(cuts_before_tests, num_prompts, seed, name_filter=_is_test_file)
    else:
        raise ValueError(f"prompt style must be one of {STYLES}, got {style!r}")
    return encode_texts(tokenizer, texts)


def jsonl_prompts(path: Path) -> list[str]:
    """The "prompt" field of each line."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["prompt"] for line in handle if line.strip()]


def docstring_cuts(lines: Sequence[str]) -> list[str]:
    """Each `def` whose body opens with a docstring: the signature through the docstring's first line."""
    cuts = []
    for i, line in enumerate(lines):
        if not _DEF.match(line):
            continue
        end = i
        while end < len(lines) and end < i + 6 and not lines[end].rstrip().endswith(":"):
            end += 1  # a signature spread over several lines
        if end + 1 < len(lines) and _DOC_OPEN.match(lines[end + 1]):
            cuts.append("".join(_dedent(lines[i:end + 2])))
    return cuts


def cuts_before_tests(lines: Sequence[str], context_lines: int = 12) -> list[str]:
    """Each test function: up to `context_lines` lines before it, then its `def test_…` line."""
    return ["".join(lines[max(0, i - context_lines):i + 1]) for i, line in enumerate(lines)
            if _TEST_DEF.match(line) and line.rstrip().endswith(":")]


def cut_from_held_out(cutter: Callable[[Sequence[str]], list[str]], num_prompts: int, seed: int,
                      name_filter: Callable[[str], bool] = lambda name: True, max_chars: int = 600) -> list[str]:
    """`num_prompts` cuts, each from a different held-out file of the stdlib and site-packages where possible
    (files drawn in a seeded order, one cut drawn per file, round after round)."""
    rng = random.Random(seed)
    per_file: list[list[str]] = []
    for source in SOURCES:
        root, paths = source_files(source)
        for path in paths:
            name = path.relative_to(root).as_posix()
            if is_held_out(name) and name_filter(name):
                cuts = [c for c in cutter(_lines(path)) if len(c) <= max_chars]
                if cuts:
                    per_file.append(cuts)
    if not per_file:
        raise ValueError("no held-out file gives a prompt of this style")
    rng.shuffle(per_file)
    picked: list[str] = []
    while len(picked) < num_prompts and any(per_file):
        for cuts in per_file:
            if cuts and len(picked) < num_prompts:
                picked.append(cuts.pop(rng.randrange(len(cuts))))
    return picked


def _is_test_file(name: str) -> bool:
    return Path(name).name.startswith("test_")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (UnicodeDecodeError, OSError):
        return []


def _dedent(lines: Sequence[str]) -> list[str]:
    """A method's lines moved to the left margin (a prompt reads like a top-level function)."""
    indent = len(lines[0]) - len(lines[0].lstrip())
    if indent == 0:
        return list(lines)
    return [line[indent:] if line[:indent].isspace() else line.lstrip() for line in lines]

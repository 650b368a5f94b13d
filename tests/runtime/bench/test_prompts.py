"""The prompt loader and how the shipped held-out prompts are cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.bench import prompts
from workers.training.corpus import is_held_out


def test_shipped_prompts_are_eight_held_out_code_prompts() -> None:
    texts = prompts.load_prompts()
    assert len(texts) == 8
    assert all(t.startswith(("def ", "class ", "async def ")) for t in texts)
    import json
    records = [json.loads(line) for line in prompts.SHIPPED_PROMPTS.read_text().splitlines()]
    assert all(is_held_out(r["source"]) for r in records)
    assert all(40 <= r["num_tokens"] <= 80 for r in records)


def test_loader_reads_the_prompt_field(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "def a():", "id": 1}\n\n{"prompt": "x = 1"}\n')
    assert prompts.load_prompts(path) == ["def a():", "x = 1"]


@pytest.mark.parametrize(("content", "line"), [('{"prompt": "a"}\n{"text": "b"}\n', 2),
                                               ('{"prompt": "a"}\n{"prompt": ""}\n', 2),
                                               ('{"prompt": "a"}\n\n{"prompt": \n', 3),
                                               ('["a"]\n', 1)])
def test_loader_names_the_bad_line(tmp_path: Path, content: str, line: int) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"p.jsonl:{line}:"):
        prompts.load_prompts(path)


def test_cut_prompt_starts_at_a_def_and_ends_at_a_line_boundary() -> None:
    text = "import os\n\nx = 1\ndef f(a, b):\n    return a + b\n\nclass C:\n    pass\n"
    count = len  # one "token" per character
    line, prompt = prompts.cut_prompt(text, count, 20, 40) or (0, "")
    assert line == 4
    assert prompt == "def f(a, b):\n    return a + b\n"
    assert prompts.cut_prompt(text, count, 20, 25) is None  # no def fits under the maximum


def test_make_prompts_skips_tests_and_is_order_independent() -> None:
    docs = [(f"pkg/mod{i}.py", f"def f{i}(x):\n    return x * {i}\n") for i in range(6)]
    docs.append(("test/test_a.py", "def test_a():\n    assert True\n"))
    first = list(prompts.make_held_out_prompts(docs, len, num=3, min_tokens=10, max_tokens=60))
    second = list(prompts.make_held_out_prompts(docs[::-1], len, num=3, min_tokens=10, max_tokens=60))
    assert first == second and len(first) == 3
    assert all(not r["source"].startswith("test/") for r in first)

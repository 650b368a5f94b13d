"""Benchmark prompts: the shipped held-out code prompts, any JSONL with a `prompt` field, and how the
shipped set was cut from the held-out split of the training corpus (workers/training/corpus.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SHIPPED_PROMPTS = Path(__file__).resolve().parent / "prompts.jsonl"
_DEF = re.compile(r"^(def|class|async def) \w")  # top-level function / class starts


def load_prompts(path: str | Path = SHIPPED_PROMPTS) -> list[str]:
    """The `prompt` strings of a JSONL file; ValueError naming file and line for bad input."""
    path = Path(path)
    prompts = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
                raise ValueError(f"{path}:{line_no}: each line needs a non-empty string field 'prompt'")
            prompts.append(record["prompt"])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def is_test_file(name: str) -> bool:
    """Test suites are skipped: the prompts should read like library code."""
    return any(part.startswith("test") or part.endswith("_test") for part in name.split("/"))


def held_out_order(names: list[str]) -> list[str]:
    """A fixed order of documents independent of listing order: by sha256 of the name."""
    return sorted(names, key=lambda name: hashlib.sha256(name.encode("utf-8")).hexdigest())


def cut_prompt(text: str, count_tokens: Callable[[str], int], min_tokens: int,
               max_tokens: int) -> tuple[int, str] | None:
    """(line number, prompt) of the first top-level def/class of `text` whose first lines make up
    `min_tokens`..`max_tokens` tokens when cut at the first line boundary past `min_tokens`."""
    lines = text.splitlines(keepends=True)
    for start, line in enumerate(lines):
        if not _DEF.match(line):
            continue
        for end in range(start + 1, len(lines) + 1):
            prompt = "".join(lines[start:end])
            count = count_tokens(prompt)
            if count >= min_tokens:
                if count <= max_tokens:
                    return start + 1, prompt
                break
    return None


def make_held_out_prompts(documents: list[tuple[str, str]], count_tokens: Callable[[str], int], num: int = 8,
                          min_tokens: int = 40, max_tokens: int = 80) -> Iterator[dict[str, Any]]:
    """At most one prompt per held-out non-test document, in `held_out_order`, until `num` prompts."""
    texts = {name: text for name, text in documents if not is_test_file(name)}
    made = 0
    for name in held_out_order(list(texts)):
        if made == num:
            return
        cut = cut_prompt(texts[name], count_tokens, min_tokens, max_tokens)
        if cut is not None:
            made += 1
            yield {"prompt": cut[1], "source": name, "line": cut[0], "num_tokens": count_tokens(cut[1])}


def write_shipped_prompts(path: str | Path, tokenizer_dir: str, num: int = 8) -> list[dict[str, Any]]:
    """Cut the shipped set again from this interpreter's standard library (held-out split) and write it."""
    import platform

    from transformers import AutoTokenizer

    from workers.training.corpus import read_corpus

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    documents = [(doc.name, doc.text) for doc in read_corpus("stdlib", "held_out")]
    records = list(make_held_out_prompts(documents, lambda text: len(tokenizer(text)["input_ids"]), num))
    with Path(path).open("w", encoding="utf-8") as handle:
        for record in records:
            record["python"] = platform.python_version()
            handle.write(json.dumps(record) + "\n")
    return records

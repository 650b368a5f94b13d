"""Local training corpora and their held-out split: the running interpreter's standard library, the
Python sources of its site-packages, a directory of text files, or a JSONL file whose lines hold a
"text" string, a "messages" chat list or "ids" (token ids, e.g. the target's own continuations).

Held-out rule (fixed, documented in models/demo/README.md): a document is held out when the first
byte of sha256(its name) is below 13 (13/256 ≈ 5.1 %). A file's name is its path relative to the
corpus root with "/" separators (e.g. "json/decoder.py"; for site-packages, from the site-packages
directory: "torch/nn/modules/linear.py"); a JSONL record's name is its "id" field if it has one, else its
0-based line number. Held-out documents are never trained on.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELD_OUT_BYTE = 13  # sha256(name)[0] < 13 -> held out
SPLITS = ("train", "held_out", "all")
SOURCES = ("stdlib", "site-packages")  # named corpora; anything else is a path
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


Message = tuple[str, str]  # (role, content) of one chat turn


@dataclass(frozen=True)
class Document:
    name: str  # what the held-out hash is taken of
    text: str  # "" for a chat record
    messages: tuple[Message, ...] | None = None  # a chat record's turns, rendered by the chat template
    ids: tuple[int, ...] | None = None  # a token-id record: used as is, no tokenizer
    num_prompt_ids: int = 0  # of `ids`, the leading ones not trained on (the prompt of a continuation)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def is_ids(self) -> bool:
        return self.ids is not None


def is_held_out(name: str) -> bool:
    """True when the document called `name` belongs to the held-out split."""
    return hashlib.sha256(name.encode("utf-8")).digest()[0] < HELD_OUT_BYTE


def in_split(name: str, split: str) -> bool:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split == "all" or is_held_out(name) == (split == "held_out")


def stdlib_root() -> Path:
    """The standard-library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Sorted *.py files under the stdlib, skipping site-packages / dist-packages / __pycache__."""
    base = root or stdlib_root()
    return sorted(p for p in base.rglob("*.py")
                  if p.is_file() and not EXCLUDED_DIRS.intersection(p.relative_to(base).parts))


def site_packages_root() -> Path:
    """The running interpreter's (or virtual environment's) purelib site-packages directory."""
    return Path(sysconfig.get_paths()["purelib"])


def site_packages_files(root: Path | None = None) -> list[Path]:
    """Sorted *.py files under site-packages, skipping __pycache__ (and nested site-/dist-packages)."""
    return stdlib_files(root or site_packages_root())


def source_files(source: str) -> tuple[Path, list[Path]]:
    """(root, sorted *.py files) of a named source in SOURCES; names are paths relative to root."""
    if source == "stdlib":
        root = stdlib_root()
    elif source == "site-packages":
        root = site_packages_root()
    else:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    return root, stdlib_files(root)


def read_corpus(source: str, split: str = "train") -> list[Document]:
    """Documents of one split. `source`: "stdlib", "site-packages", a directory of text files, or a .jsonl
    file ({"text": str}, {"messages": [{"role": str, "content": str}, ...]} or {"ids": [int, ...],
    "prompt_len": int} per line)."""
    in_split("", split)  # validates `split` before any file is read
    if source in SOURCES:
        docs = _read_files(*source_files(source))
    else:
        path = Path(source)
        if path.is_dir():
            docs = _read_files(path, sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            docs = list(_read_jsonl(path))
        else:
            raise ValueError(f"corpus {source!r} is neither 'stdlib', a directory nor a JSONL file")
    return [d for d in docs if in_split(d.name, split)]


def _read_files(root: Path, files: list[Path]) -> list[Document]:
    """UTF-8 text files as documents named by relative path; binary / undecodable files are skipped."""
    docs = []
    for file in files:
        try:
            text = file.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip() and "\x00" not in text:
            docs.append(Document(file.relative_to(root).as_posix(), text))
    return docs


def _read_jsonl(path: Path) -> Iterator[Document]:
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle):
            if not line.strip():
                continue
            record = json.loads(line)
            where = f"{path}:{line_no + 1}"
            if not isinstance(record, dict) or not ("text" in record or "messages" in record or "ids" in record):
                raise ValueError(f"{where}: each JSONL line needs a string 'text', a list 'messages' or a list 'ids'")
            name = str(record.get("id", line_no))
            if "ids" in record:
                yield _ids_document(name, record, where)
            elif "messages" in record:
                yield Document(name, "", _messages(record["messages"], where))
            elif isinstance(record["text"], str):
                yield Document(name, record["text"])
            else:
                raise ValueError(f"{where}: field 'text' must be a string, got {type(record['text']).__name__}")


def _messages(value: Any, where: str) -> tuple[Message, ...]:
    """Validated (role, content) turns of one chat record."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: 'messages' must be a non-empty list, got {value!r:.80}")
    turns = []
    for i, turn in enumerate(value):
        if not (isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)):
            raise ValueError(f"{where}: messages[{i}] needs string fields 'role' and 'content', got {turn!r:.80}")
        turns.append((turn["role"], turn["content"]))
    return tuple(turns)


def _ids_document(name: str, record: dict[str, Any], where: str) -> Document:
    """A token-id record: {"ids": [int, ...], "prompt_len": int (default 0)}."""
    ids, prompt_len = record["ids"], record.get("prompt_len", 0)
    if not (isinstance(ids, list) and ids and all(isinstance(i, int) and i >= 0 for i in ids)):
        raise ValueError(f"{where}: 'ids' must be a non-empty list of token ids, got {ids!r:.80}")
    if not (isinstance(prompt_len, int) and 0 <= prompt_len < len(ids)):
        raise ValueError(f"{where}: 'prompt_len' must be an int in [0, {len(ids)}), got {prompt_len!r}")
    return Document(name, "", ids=tuple(ids), num_prompt_ids=prompt_len)

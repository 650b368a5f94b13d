"""Corpus readers and the held-out split: deterministic, disjoint, about 5 % of the stdlib files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from workers.training.corpus import is_held_out, read_corpus, stdlib_files, stdlib_root
from workers.training.tokens import (
    eval_window_starts,
    eval_windows,
    held_out_prompts,
    random_windows,
    step_generator,
    stream_owners,
)


def test_held_out_rule_is_the_documented_hash() -> None:
    for name in ("json/decoder.py", "asyncio/tasks.py", "os.py", "0", "17"):
        assert is_held_out(name) == (hashlib.sha256(name.encode()).digest()[0] < 13)


def test_stdlib_split_is_disjoint_deterministic_and_about_five_percent() -> None:
    root = stdlib_root()
    files = stdlib_files(root)
    names = [p.relative_to(root).as_posix() for p in files]
    assert names and not any("site-packages" in n or "dist-packages" in n for n in names)
    assert all(n.endswith(".py") for n in names)
    held = {n for n in names if is_held_out(n)}
    train = {n for n in names if not is_held_out(n)}
    assert held and not held & train and held | train == set(names)
    assert 0.03 < len(held) / len(names) < 0.08
    assert held == {n for n in names if is_held_out(n)}  # same answer on a second pass


def test_directory_and_jsonl_corpora_split_by_name(tmp_path: Path) -> None:
    texts = {f"pkg/mod{i}.py": f"x = {i}\n" for i in range(60)}
    for name, text in texts.items():
        (tmp_path / "dir" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dir" / name).write_text(text)
    (tmp_path / "dir" / "blob.bin").write_bytes(b"\xff\xfe\x00binary")
    train = read_corpus(str(tmp_path / "dir"), "train")
    held = read_corpus(str(tmp_path / "dir"), "held_out")
    assert {d.name for d in train} | {d.name for d in held} == set(texts)
    assert all(is_held_out(d.name) for d in held) and not any(is_held_out(d.name) for d in train)
    assert all(d.text == texts[d.name] for d in train)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(40)))
    docs = read_corpus(str(jsonl), "all")
    assert [d.name for d in docs] == [str(i) for i in range(40)]
    jsonl.write_text(json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(ValueError, match="'text'"):
        read_corpus(str(jsonl), "all")
    with pytest.raises(ValueError, match="split"):
        read_corpus(str(tmp_path / "dir"), "test")


def test_windows_and_prompts_are_deterministic() -> None:
    stream = torch.arange(1000)
    a = random_windows(stream, 4, 16, step_generator(0, 7))
    b = random_windows(stream, 4, 16, step_generator(0, 7))
    assert torch.equal(a, b) and a.shape == (4, 16)
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(4, 15, dtype=torch.long))  # contiguous slices
    assert eval_windows(stream, 100, 4).shape == (4, 100)
    docs = [list(range(i * 1000, i * 1000 + 300)) for i in range(5)]
    prompts = held_out_prompts(docs, 7, 64, 128, seed=1)
    assert prompts == held_out_prompts(docs, 7, 64, 128, seed=1)
    assert all(64 <= len(p) <= 128 for p in prompts)
    assert all(p == list(range(p[0], p[0] + len(p))) for p in prompts)  # a contiguous piece of one document


def test_stream_owners_map_offsets_to_documents_eos_included() -> None:
    # documents of 3, 1 and 2 tokens: stream = d0 d0 d0 eos | d1 eos | d2 d2 eos
    assert stream_owners([3, 1, 2], [0, 3, 4, 5, 6, 8]) == [0, 0, 1, 1, 2, 2]


def test_eval_window_starts_match_the_windows() -> None:
    stream = torch.arange(1000)
    starts = eval_window_starts(1000, 100, 4)
    assert starts == [0, 300, 600, 900]
    assert eval_windows(stream, 100, 4)[:, 0].tolist() == starts

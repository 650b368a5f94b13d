"""Incremental detokenization: deltas add up to the full decode, stop strings end it, work stays linear."""

from __future__ import annotations

from typing import Any

import pytest
from transformers import AutoTokenizer

from runtime.text import TextStream

TEXT = "def héllo(wörld):\n    return '日本語 ✓ naïve' + \"\\u00e9\"  # ok — done\n" * 3


class CountingTokenizer:
    """The demo tokenizer, counting how many token ids it was asked to decode."""

    def __init__(self) -> None:
        self.inner = AutoTokenizer.from_pretrained("models/demo/tokenizer")
        self.num_decoded = 0

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        self.num_decoded += len(ids)
        text = self.inner.decode(ids, **kwargs)
        assert isinstance(text, str)  # one sequence of ids decodes to one string
        return text


@pytest.fixture(scope="module")
def tokenizer() -> CountingTokenizer:
    return CountingTokenizer()


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_deltas_add_up_to_the_full_text(tokenizer: CountingTokenizer, chunk: int) -> None:
    ids = tokenizer.inner(TEXT)["input_ids"]
    stream = TextStream(tokenizer)
    pieces = []
    for end in range(chunk, len(ids) + chunk, chunk):
        delta, stopped = stream.push(ids[:end])
        assert not stopped and "\ufffd" not in delta  # a half character is never handed out
        pieces.append(delta)
    pieces.append(stream.flush(ids))
    assert "".join(pieces) == tokenizer.inner.decode(ids, skip_special_tokens=True)


def test_work_is_linear_in_the_output(tokenizer: CountingTokenizer) -> None:
    ids = tokenizer.inner(TEXT * 4)["input_ids"]
    stream = TextStream(tokenizer)
    tokenizer.num_decoded = 0
    for end in range(1, len(ids) + 1):
        stream.push(ids[:end])
    assert tokenizer.num_decoded < 8 * len(ids)  # re-decoding everything each time would be ~len²/2


def test_stop_string_across_tokens_cuts_the_text(tokenizer: CountingTokenizer) -> None:
    ids = tokenizer.inner(TEXT)["input_ids"]
    stream = TextStream(tokenizer, stop=["return '日本"])
    out, stopped = [], False
    for end in range(1, len(ids) + 1):
        delta, stopped = stream.push(ids[:end])
        out.append(delta)
        if stopped:
            break
    assert stopped
    assert "".join(out) == "def héllo(wörld):\n    "

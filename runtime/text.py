"""Incremental detokenization with stop strings, for streaming text deltas.

Each push decodes only the tokens since the last complete character (a prefix/read offset pair, as
serving engines do), never the whole output again, so a request's text costs O(length) overall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextStream:
    """Turns a growing list of token ids into text deltas; finds stop strings across chunk borders."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.text = ""  # decoded text of token_ids[:read_offset]
        self.sent = ""  # text already handed out (a prefix of `text`)
        self._prefix_offset = 0  # decoding restarts here, so tokenizers that look back get context
        self._read_offset = 0  # tokens whose text is in `text`

    def _advance(self, token_ids: Sequence[int], final: bool) -> None:
        """Append the text of the tokens past `_read_offset`, unless it ends in an incomplete character."""
        if len(token_ids) <= self._read_offset:
            return
        window = list(token_ids[self._prefix_offset:])
        known = self.tokenizer.decode(window[: self._read_offset - self._prefix_offset], skip_special_tokens=True)
        full = self.tokenizer.decode(window, skip_special_tokens=True)
        if (full.endswith("\ufffd") and not final) or not full.startswith(known):
            return  # a multi-byte character is still open: wait for its next token
        self.text += full[len(known):]
        self._prefix_offset, self._read_offset = self._read_offset, len(token_ids)

    def push(self, token_ids: Sequence[int]) -> tuple[str, bool]:
        """All generated ids so far -> (new text to hand out, whether a stop string ended it)."""
        if self.tokenizer is None:
            return "", False
        self._advance(token_ids, final=False)
        cut = self._stop_index(self.text)
        if cut is not None:
            delta, self.sent = self.text[len(self.sent):cut], self.text[:cut]
            return delta, True
        hold = self._partial_stop(self.text)  # a stop string may be starting at the end
        ready = self.text[: len(self.text) - hold]
        if len(ready) <= len(self.sent):
            return "", False
        delta, self.sent = ready[len(self.sent):], ready
        return delta, False

    def flush(self, token_ids: Sequence[int]) -> str:
        """Text held back at the end of a request."""
        if self.tokenizer is None:
            return ""
        self._advance(token_ids, final=True)
        delta, self.sent = self.text[len(self.sent):], self.text
        return delta

    def _stop_index(self, text: str) -> int | None:
        start = max(len(self.sent) - max((len(s) for s in self.stop), default=0), 0)
        hits = [i for i in (text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _partial_stop(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stop:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best

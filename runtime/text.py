"""Incremental detokenization with stop strings, for streaming text deltas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextStream:
    """Turns a growing list of token ids into text deltas; finds stop strings across chunk borders."""

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.sent = ""  # text already handed out

    def push(self, token_ids: Sequence[int]) -> tuple[str, bool]:
        """All generated ids so far -> (new text to hand out, whether a stop string ended it)."""
        if self.tokenizer is None:
            return "", False
        text = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        cut = self._stop_index(text)
        if cut is not None:
            delta, self.sent = text[len(self.sent):cut], text[:cut]
            return delta, True
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its next token
            text = text[: -1]
        hold = self._partial_stop(text)  # a stop string may be starting at the end
        ready = text[: len(text) - hold]
        if len(ready) <= len(self.sent):
            return "", False
        delta, self.sent = ready[len(self.sent):], ready
        return delta, False

    def flush(self, token_ids: Sequence[int]) -> str:
        """Text held back at the end of a request."""
        if self.tokenizer is None:
            return ""
        text: str = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        delta, self.sent = text[len(self.sent):], text
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

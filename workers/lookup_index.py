"""An incremental n-gram index of one request's tokens, for the verifier's prompt lookup.

`find_continuations` (workers/drafters/ngram.py) scans the whole history at every call; the verifier
looks up every running request at every verification, so at 16 requests the scans were a fifth of
its choosing time. The index adds the windows of new tokens as they are committed and answers the
same question with a dictionary look-up: the same rows, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class LookupIndex:
    """Start positions of every n-gram (min_ngram <= n <= max_ngram) of a growing token list."""

    def __init__(self, max_ngram: int, min_ngram: int) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._starts: dict[tuple[int, ...], list[int]] = {}  # n-gram -> its start positions, ascending
        self._indexed = 0  # windows ending before this position are in the index

    def continuations(self, history: Sequence[int], length: int, max_matches: int) -> torch.Tensor:
        """[M, <=length] what followed earlier occurrences of the longest n-gram ending `history`: the
        most recent match first, distinct rows, -1 past the end (as `find_continuations`)."""
        total = len(history)
        self._extend(history, total - 1)  # the suffix itself is not an earlier occurrence
        for n in range(min(self.max_ngram, total - 1), self.min_ngram - 1, -1):
            starts = self._starts.get(tuple(history[total - n:]))
            if not starts:
                continue
            rows: list[tuple[int, ...]] = []
            seen: set[tuple[int, ...]] = set()
            for start in reversed(starts[-4 * max_matches:]):
                row = tuple(history[start + n: start + n + length])
                row += (-1,) * (length - len(row))
                if row not in seen:
                    seen.add(row)
                    rows.append(row)
                    if len(rows) == max_matches:
                        break
            return torch.tensor(rows, dtype=torch.long)
        return torch.zeros(0, length, dtype=torch.long)

    def _extend(self, history: Sequence[int], end: int) -> None:
        """Index every window that lies inside history[:end]."""
        for stop in range(self._indexed + 1, end + 1):  # windows ending at position stop - 1
            for n in range(self.min_ngram, min(self.max_ngram, stop) + 1):
                self._starts.setdefault(tuple(history[stop - n: stop]), []).append(stop - n)
        self._indexed = max(self._indexed, end)

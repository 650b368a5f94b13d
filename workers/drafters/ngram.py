"""Prompt-lookup drafting: continue the request's own earlier text where its latest n-gram recurs.

The tree holds up to `top_k` distinct continuations of the longest matching suffix (most recent
match first), merged into a trie; a node's probability is the share of matches that pass through
it. Needs no model and no features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from workers.drafters.base import Drafter, DraftSession
from workers.tree import ROOT, DraftTree
from workers.tree_policy import TreeConfig


def find_continuations(history: torch.Tensor, max_ngram: int, min_ngram: int, length: int,
                       max_matches: int) -> torch.Tensor:
    """[M, <=length] continuations after earlier occurrences of the longest matching suffix.

    Rows are the most recent matches first; shorter continuations (near the end) are padded with -1.
    """
    total = history.numel()
    for n in range(min(max_ngram, total - 1), min_ngram - 1, -1):  # a few sizes, longest first
        windows = history[: total - 1].unfold(0, n, 1)  # [total - n, n]; the suffix itself excluded
        starts = torch.nonzero((windows == history[total - n:]).all(dim=1)).flatten()
        if starts.numel() == 0:
            continue
        starts = starts.flip(0)[: max_matches * 4] + n  # most recent first
        offsets = starts[:, None] + torch.arange(length)[None, :]
        conts = torch.where(offsets < total, history[offsets.clamp(max=total - 1)], -1)
        conts = conts[conts[:, 0] >= 0]
        if conts.numel():
            return _distinct_rows(conts)[:max_matches]
    return torch.zeros(0, length, dtype=torch.long)


def _distinct_rows(rows: torch.Tensor) -> torch.Tensor:
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), rows.shape[0], dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(rows.shape[0]), reduce="amin")
    return rows[torch.sort(first).values]


def trie_from_rows(rows: torch.Tensor) -> DraftTree:
    """Merge continuations ([M, L], -1 = padding) into a tree; prob = share of rows through a node.

    Nodes come level by level (parents first); a few rows of a few tokens, so plain Python is fastest.
    """
    children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    parents: list[int] = []
    tokens: list[int] = []
    passes: list[int] = []
    ends = [ROOT] * rows.shape[0]  # the node each row has reached
    table = rows.tolist()
    for level in range(rows.shape[1]):
        for r, row in enumerate(table):
            if row[level] < 0 or (level > 0 and ends[r] == ROOT):
                ends[r] = ROOT if row[level] < 0 else ends[r]
                continue
            key = (ends[r], row[level])
            if key not in children:
                children[key] = len(tokens)
                parents.append(ends[r])
                tokens.append(row[level])
                passes.append(0)
            node = children[key]
            passes[node] += 1
            ends[r] = node
        if all(e == ROOT for e in ends):
            break
    probs = [passes[i] / (len(table) if p == ROOT else passes[p]) for i, p in enumerate(parents)]
    return DraftTree.from_lists(tokens, parents, probs)


class NgramSession(DraftSession):
    def __init__(self, committed_ids: Sequence[int], config: TreeConfig, max_ngram: int, min_ngram: int) -> None:
        super().__init__(committed_ids, config)
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._is_grown = False

    def grow(self, max_expansions: int | None = None) -> bool:
        if self._is_grown:
            return False
        self._is_grown = True
        history = torch.tensor(self.committed_ids, dtype=torch.long)
        rows = find_continuations(history, self.max_ngram, self.min_ngram, self.config.depth, self.config.top_k)
        if rows.numel():
            self.tree = trie_from_rows(rows)
        return self.tree.num_nodes > 0

    def _on_rollback(self, old_len: int, features: torch.Tensor | None) -> None:
        self._is_grown = False

    def _on_reroot(self, path: list[int], old_len: int, features: torch.Tensor | None) -> None:
        self._is_grown = False  # the kept subtree is extended by a fresh lookup on the next grow()

    def _on_reset(self, features: torch.Tensor | None) -> None:
        self._is_grown = False


class NgramDrafter(Drafter):
    """Prompt-lookup drafter; `max_ngram`..`min_ngram` are the suffix lengths tried, longest first."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"ngram sizes need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def open(self, committed_ids: Sequence[int], config: TreeConfig,
             features: torch.Tensor | None = None) -> DraftSession:
        return NgramSession(committed_ids, config, self.max_ngram, self.min_ngram)

"""Prompt-lookup drafter."""

from __future__ import annotations

import torch

from workers.drafters.ngram import NgramDrafter, find_continuations, trie_from_rows
from workers.tree_policy import TreeConfig


def test_finds_longest_suffix_continuations_most_recent_first() -> None:
    history = torch.tensor([1, 2, 3, 9, 1, 2, 3, 8, 7, 5, 2, 3])
    rows = find_continuations(history, max_ngram=3, min_ngram=1, length=2, max_matches=4)
    # suffix [5, 2, 3] never recurs; [2, 3] does, twice: followed by 8 7 (recent) and 9 1
    assert rows.tolist() == [[8, 7], [9, 1]]


def test_no_match_gives_no_rows() -> None:
    rows = find_continuations(torch.tensor([1, 2, 3, 4]), 3, 1, 3, 4)
    assert rows.shape[0] == 0


def test_trie_merges_shared_prefixes() -> None:
    tree = trie_from_rows(torch.tensor([[5, 6, 7], [5, 6, 8], [4, -1, -1]]))
    assert tree.num_nodes == 5
    assert len(tree.follow([5, 6, 8])) == 3
    probs = dict(zip(tree.token_ids.tolist(), tree.probs.tolist(), strict=True))
    assert abs(probs[5] - 2 / 3) < 1e-6 and abs(probs[4] - 1 / 3) < 1e-6


def test_session_drafts_repeated_text_and_reroots() -> None:
    session = NgramDrafter().open([1, 2, 3, 4, 1, 2], TreeConfig(total_tokens=8, depth=3, top_k=2))
    tree = session.draft()
    assert tree.follow([3, 4, 1]) == [0, 1, 2]
    assert session.commit([3, 4])  # 3 accepted, bonus 4 is a node: re-root hit
    assert session.committed_ids == [1, 2, 3, 4, 1, 2, 3, 4]
    assert session.tree.follow([1]) == [0]
    assert not session.commit([9])

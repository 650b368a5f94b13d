"""The verifier's incremental n-gram index answers exactly as the full scan does, as the history grows."""

from __future__ import annotations

import pytest
import torch

from workers.drafters.ngram import find_continuations
from workers.lookup_index import LookupIndex


@pytest.mark.parametrize("seed", range(8))
def test_the_index_equals_a_full_scan_at_every_length(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    vocab = 3 + seed % 4  # few distinct tokens: many matches, duplicates and near-end continuations
    history = torch.randint(0, vocab, (120,), generator=generator).tolist()
    index = LookupIndex(max_ngram=3, min_ngram=1)
    step = 1 + seed % 3  # commits of several tokens at once, as verifications make them
    for total in range(1, len(history) + 1, step):
        got = index.continuations(history[:total], length=10, max_matches=4)
        want = find_continuations(torch.tensor(history[:total]), 3, 1, 10, 4)
        assert torch.equal(got, want), total


def test_nothing_found_and_bad_sizes() -> None:
    index = LookupIndex(max_ngram=2, min_ngram=2)
    assert index.continuations([1, 2, 3, 4], length=5, max_matches=4).shape == (0, 5)
    assert index.continuations([1, 2, 3, 1, 2], length=5, max_matches=4).tolist() == [[3, 1, 2, -1, -1]]
    with pytest.raises(ValueError):
        LookupIndex(max_ngram=1, min_ngram=2)

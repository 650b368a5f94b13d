"""How good a trained demo model is, as pure functions: repetition in greedy text (distinct n-gram
ratio) and the share of a drafter's cost in a target step.
"""

from __future__ import annotations

from collections.abc import Sequence


def distinct_ngram_ratio(token_ids: Sequence[int], n: int = 4) -> float:
    """Distinct n-grams / all n-grams of one sequence: 1.0 never repeats, near 0 loops ("the the the").

    A sequence shorter than n has no n-gram and counts as 1.0 (nothing repeated)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [tuple(token_ids[i:i + n]) for i in range(len(token_ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def mean_distinct_ngram_ratio(sequences: Sequence[Sequence[int]], n: int = 4) -> float:
    """The mean of `distinct_ngram_ratio` over the sequences that have an n-gram (each weighs the
    same); a completion that stopped within n - 1 tokens says nothing about repetition and is left out."""
    scored = [distinct_ngram_ratio(s, n) for s in sequences if len(s) >= n]
    if not scored:
        raise ValueError(f"no sequence has {n} tokens")
    return sum(scored) / len(scored)

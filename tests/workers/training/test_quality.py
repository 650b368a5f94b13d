"""Repetition in generated text, as the demo target's quality bar measures it."""

from __future__ import annotations

import pytest

from workers.training.quality import distinct_ngram_ratio, mean_distinct_ngram_ratio


def test_a_loop_scores_low_and_fresh_text_scores_one() -> None:
    assert distinct_ngram_ratio(list(range(20)), 4) == 1.0
    loop = [5, 6] * 10  # 17 four-grams, only (5,6,5,6) and (6,5,6,5)
    assert distinct_ngram_ratio(loop, 4) == pytest.approx(2 / 17)
    assert distinct_ngram_ratio([7] * 10, 1) == pytest.approx(1 / 10)


def test_short_sequences_and_means() -> None:
    assert distinct_ngram_ratio([1, 2, 3], 4) == 1.0
    assert mean_distinct_ngram_ratio([[1, 2, 3, 4], [9] * 5], 4) == pytest.approx((1.0 + 0.5) / 2)
    assert mean_distinct_ngram_ratio([[9] * 5, [2]], 4) == pytest.approx(0.5)  # [2] stopped early: left out
    with pytest.raises(ValueError):
        distinct_ngram_ratio([1, 2], 0)
    with pytest.raises(ValueError):
        mean_distinct_ngram_ratio([[1, 2]], 4)

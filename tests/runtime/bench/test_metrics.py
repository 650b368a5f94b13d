"""The bench's arithmetic against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from runtime.bench import metrics as m


def test_rates_and_ms_per_token() -> None:
    assert m.tokens_per_s(300, 1.5) == pytest.approx(200.0)
    assert m.tokens_per_s(10, 0.0) == 0.0
    assert m.ms_per_token(0.25, 50) == pytest.approx(5.0)
    assert m.ms_per_token(1.0, 0) == math.inf


def test_percentile_interpolates_between_ranks() -> None:
    values = [40.0, 10.0, 30.0, 20.0]  # sorted: 10 20 30 40; rank of p50 = 1.5, of p90 = 2.7
    assert m.percentile(values, 50) == pytest.approx(25.0)
    assert m.percentile(values, 90) == pytest.approx(30.0 + 0.7 * 10.0)
    assert m.percentile(values, 0) == 10.0 and m.percentile(values, 100) == 40.0
    assert m.percentile([7.0], 90) == 7.0
    with pytest.raises(ValueError, match="empty"):
        m.percentile([], 50)


def test_latency_summary() -> None:
    summary = m.latency_summary([2.0, 4.0, 6.0, 8.0, 10.0])
    assert summary == pytest.approx({"mean": 6.0, "p50": 6.0, "p90": 9.2})


def test_speedup_needs_a_baseline() -> None:
    assert m.speedup(150.0, 100.0) == pytest.approx(1.5)
    assert m.speedup(150.0, None) is None
    assert m.speedup(150.0, 0.0) is None


def test_merge_spec_stats_pools_counts_not_ratios() -> None:
    a = {"num_verifications": 10, "num_committed": 30, "accepted_per_depth": [8, 5], "reached_per_depth": [10, 8]}
    b = {"num_verifications": 30, "num_committed": 40, "accepted_per_depth": [6, 2, 1],
         "reached_per_depth": [30, 20, 4]}
    merged = m.merge_spec_stats([a, b])
    assert merged["tau"] == pytest.approx(70 / 40)  # not the mean of 3.0 and 1.33
    assert merged["accepted_per_depth"] == [14, 7, 1]
    assert merged["reached_per_depth"] == [40, 28, 4]
    assert merged["acceptance_per_depth"] == pytest.approx([14 / 40, 7 / 28, 1 / 4])
    assert m.merge_spec_stats([])["tau"] is None


def test_merge_spec_stats_with_shorter_accepted_lists() -> None:
    # the runtime's accepted list only grows as deep as something was accepted
    merged = m.merge_spec_stats([{"num_verifications": 2, "num_committed": 3, "accepted_per_depth": [1],
                                  "reached_per_depth": [2, 2, 1]}])
    assert merged["accepted_per_depth"] == [1, 0, 0]
    assert merged["acceptance_per_depth"] == pytest.approx([0.5, 0.0, 0.0])


def test_union_and_busy_fraction() -> None:
    spans = [(0.0, 10.0), (5.0, 15.0), (20.0, 30.0), (22.0, 25.0)]  # union = 15 + 10
    assert m.union_length(spans) == pytest.approx(25.0)
    assert m.busy_fraction(spans, (0.0, 50.0)) == pytest.approx(0.5)
    assert m.busy_fraction(spans, (10.0, 30.0)) == pytest.approx((5.0 + 10.0) / 20.0)  # clipped to the window
    assert m.busy_fraction([], (0.0, 1.0)) == 0.0


def test_per_verification_and_cpu_utilisation() -> None:
    assert m.per_verification(12, 4) == pytest.approx(3.0)
    assert m.per_verification(None, 4) is None
    assert m.per_verification(3, 0) is None
    assert m.cpu_utilisation(1.5, 2.0) == pytest.approx(0.75)

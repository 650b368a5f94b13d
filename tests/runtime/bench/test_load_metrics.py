"""The load mode's arithmetic: levels, request schedules, TTFT / ITL from chunk times, percentiles, busy share."""

from __future__ import annotations

import math

import pytest

from runtime.bench import load_metrics as lm


def test_levels_are_sorted_distinct_positive_ints() -> None:
    assert lm.parse_levels("16, 1,4,4,64") == [1, 4, 16, 64]
    for bad in ("", "0,2", "1,x", "-1"):
        with pytest.raises(ValueError, match="--concurrency"):
            lm.parse_levels(bad)


def test_requests_default_to_every_prompt_and_every_slot_and_cycle_the_prompts() -> None:
    assert lm.num_requests_at(1, 8, None) == 8
    assert lm.num_requests_at(64, 8, None) == 64
    assert lm.num_requests_at(64, 8, 10) == 10
    assert lm.prompt_indices(7, 3) == [0, 1, 2, 0, 1, 2, 0]
    assert [list(b) for b in lm.batches(7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_first_token_is_the_first_chunk() -> None:
    assert lm.first_token_s([0.5, 0.7]) == 0.5
    assert math.isnan(lm.first_token_s([]))


def test_inter_token_latency_is_per_token_and_skips_the_first_chunk() -> None:
    # chunks at 0.1 s (2 tokens), 0.4 s (3 tokens), 0.5 s (1 token)
    assert lm.inter_token_s([0.1, 0.4, 0.5], [2, 3, 1]) == pytest.approx([0.1, 0.1, 0.1, 0.1])
    # hf-generate's shape: first token at TTFT, the other n-1 together at the end: (total - TTFT) / (n - 1)
    assert lm.inter_token_s([0.3, 1.5], [1, 4]) == pytest.approx([0.3] * 4)
    assert lm.inter_token_s([0.3], [1]) == []
    with pytest.raises(ValueError, match="2 chunk times but 1 chunk sizes"):
        lm.inter_token_s([0.1, 0.2], [1])


def test_p50_p90_interpolate_and_leave_out_nan() -> None:
    out = lm.p50_p90([1.0, 2.0, 3.0, 4.0, math.nan, 5.0])
    assert out == {"p50": 3.0, "p90": pytest.approx(4.6)}
    assert all(math.isnan(v) for v in lm.p50_p90([math.nan]).values())


def test_busy_fraction_is_a_share_of_the_wall_time() -> None:
    assert lm.busy_fraction(1.5, 2.0) == 0.75
    assert lm.busy_fraction(3.0, 2.0) == 1.0  # clipped: clocks of two processes
    assert lm.busy_fraction(None, 2.0) is None
    assert lm.busy_fraction(1.0, 0.0) is None

"""The benchmark's arithmetic, as pure functions: rates, percentiles, speedups, τ, utilisation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def tokens_per_s(num_tokens: int, seconds: float) -> float:
    """Tokens per second; 0 when no time passed."""
    return num_tokens / seconds if seconds > 0 else 0.0


def ms_per_token(seconds: float, num_tokens: int) -> float:
    """Milliseconds per generated token of one request (inf when it produced none)."""
    return 1000.0 * seconds / num_tokens if num_tokens else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(ms_values: Sequence[float]) -> dict[str, float]:
    """Mean, p50 and p90 of per-request ms/token."""
    if not ms_values:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan}
    return {"mean": sum(ms_values) / len(ms_values), "p50": percentile(ms_values, 50),
            "p90": percentile(ms_values, 90)}


def speedup(rate: float, base_rate: float | None) -> float | None:
    """`rate` over the baseline's rate; None without a baseline."""
    if base_rate is None or base_rate <= 0:
        return None
    return rate / base_rate


def merge_spec_stats(stats: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-method τ and acceptance per depth from per-request stats (DESIGN.md §11 definitions).

    τ = Σ committed / Σ verifications over all requests; acceptance at depth d = Σ accepted nodes at
    d / Σ verifications that reached d. Requests without stats are skipped.
    """
    verifications = committed = 0
    accepted: list[int] = []
    reached: list[int] = []
    for item in stats:
        verifications += int(item.get("num_verifications", 0))
        committed += int(item.get("num_committed", 0))
        _add_lists(accepted, item.get("accepted_per_depth", []))
        _add_lists(reached, item.get("reached_per_depth", []))
    _add_lists(accepted, [0] * len(reached))  # nothing accepted that deep: the lists may differ in length
    _add_lists(reached, [0] * len(accepted))
    return {"tau": committed / verifications if verifications else None,
            "num_verifications": verifications, "num_committed": committed,
            "accepted_per_depth": accepted, "reached_per_depth": reached,
            "acceptance_per_depth": [a / r if r else 0.0 for a, r in zip(accepted, reached, strict=True)]}


def _add_lists(total: list[int], values: Sequence[int]) -> None:
    if len(total) < len(values):
        total.extend([0] * (len(values) - len(total)))
    for i, value in enumerate(values):
        total[i] += int(value)


def per_verification(count: float | None, num_verifications: int) -> float | None:
    """A count divided by the number of verifications (None when either is missing)."""
    if count is None or num_verifications <= 0:
        return None
    return count / num_verifications


def clip_intervals(intervals: Iterable[tuple[float, float]], window: tuple[float, float]) -> list[tuple[float, float]]:
    """(start, end) intervals cut to the window; empty ones dropped."""
    lo, hi = window
    return [(max(s, lo), min(e, hi)) for s, e in intervals if min(e, hi) > max(s, lo)]


def union_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by possibly overlapping (start, end) intervals."""
    total, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def busy_fraction(intervals: Iterable[tuple[float, float]], window: tuple[float, float]) -> float:
    """Share of the window covered by at least one interval (nested spans count once)."""
    width = window[1] - window[0]
    return union_length(clip_intervals(intervals, window)) / width if width > 0 else 0.0


def cpu_utilisation(cpu_seconds: float, wall_seconds: float) -> float:
    """CPU seconds a process used per wall second (1.0 = one core fully busy)."""
    return cpu_seconds / wall_seconds if wall_seconds > 0 else 0.0

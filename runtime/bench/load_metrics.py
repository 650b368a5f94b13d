"""The load mode's arithmetic, as pure functions: concurrency levels, request schedules, first-token and
inter-token latencies from chunk arrival times, percentiles and busy fractions."""

from __future__ import annotations

import math
from collections.abc import Sequence

from runtime.bench.metrics import percentile


def parse_levels(text: str) -> list[int]:
    """`--concurrency 1,4,16,64` as sorted distinct positive ints."""
    try:
        levels = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--concurrency must be a comma list of integers, got {text!r}") from None
    if not levels or levels[0] < 1:
        raise ValueError(f"--concurrency must list integers >= 1, got {text!r}")
    return levels


def num_requests_at(concurrency: int, num_prompts: int, num_requests: int | None) -> int:
    """Requests served at one level: `--num-requests`, else enough to fill every slot and use every prompt once."""
    return num_requests if num_requests is not None else max(concurrency, num_prompts)


def prompt_indices(num_requests: int, num_prompts: int) -> list[int]:
    """Request i uses prompt i mod the number of prompts (the list is cycled)."""
    return [i % num_prompts for i in range(num_requests)]


def batches(num_requests: int, size: int) -> list[range]:
    """Consecutive request indices in batches of `size` (the last may be smaller)."""
    return [range(start, min(start + size, num_requests)) for start in range(0, num_requests, size)]


def first_token_s(chunk_s: Sequence[float]) -> float:
    """Time to first token: arrival of the first chunk, in seconds since the request was sent (nan: none)."""
    return chunk_s[0] if chunk_s else math.nan


def inter_token_s(chunk_s: Sequence[float], chunk_tokens: Sequence[int]) -> list[float]:
    """One inter-token latency per token after the first chunk: each later chunk's gap to the chunk before,
    divided by its tokens (a chunk of k tokens gives k equal values). Tokens that came with the first
    chunk have no gap of their own and give none."""
    if len(chunk_s) != len(chunk_tokens):
        raise ValueError(f"{len(chunk_s)} chunk times but {len(chunk_tokens)} chunk sizes")
    out: list[float] = []
    for i in range(1, len(chunk_s)):
        if chunk_tokens[i] > 0:
            out += [(chunk_s[i] - chunk_s[i - 1]) / chunk_tokens[i]] * chunk_tokens[i]
    return out


def p50_p90(values: Sequence[float]) -> dict[str, float]:
    """Median and 90th percentile (nan for no values; nan values are left out)."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"p50": math.nan, "p90": math.nan}
    return {"p50": percentile(finite, 50), "p90": percentile(finite, 90)}


def busy_fraction(busy_s: float | None, wall_s: float) -> float | None:
    """Share of a level's wall time the verifier spent computing (None when unknown)."""
    if busy_s is None or wall_s <= 0:
        return None
    return min(max(busy_s, 0.0) / wall_s, 1.0)

"""Optional `torch.compile` of the verifier's batched forward, on bucketed shapes (`verifier.compile`).

A compiled graph is specialised to its shapes, and a verification's rows B (running requests), width W
(root + nodes) and key length K (longest prefix + W) change from step to step. Padding each to a few
sizes (B and W to powers of two, K to a multiple of KV_BUCKET) bounds the set of graphs: each is
compiled once, the common ones during start-up calibration, and a running deployment does not
recompile per step. On a GPU this is the way to CUDA graphs (`mode="reduce-overhead"`). Padding rows
write into a scratch slot that no request owns and see only themselves; prompt chunks (wider than any
tree) run eager. On the 2-core CPU it does not win (docs/performance.md), so it is off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from workers.batch_mask import Row, batch_inputs
from workers.slot_cache import SlotCache

KV_BUCKET = 256  # key lengths are rounded up to a multiple of this (or to the slot length)
MIN_RECOMPILE_LIMIT = 512  # graphs per code object dynamo keeps before it falls back to eager


def bucket(n: int) -> int:
    """The next power of two >= n (n >= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def bucketed_key_length(kv_len: int, max_len: int) -> int:
    return min(-(-kv_len // KV_BUCKET) * KV_BUCKET, max_len)


class CompiledForward:
    """The decoder compiled once, called on padded rows; `shapes` lists the (B, W, K) it has run."""

    def __init__(self, decoder: Any, cache: SlotCache, max_width: int, backend: str | Callable[..., Any] = "inductor",
                 mode: str | None = None) -> None:
        for name in ("recompile_limit", "accumulated_recompile_limit"):  # one graph per bucket, kept
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), MIN_RECOMPILE_LIMIT))
        self.scratch = cache.allocate()  # padding rows write here; no request ever owns it
        self.max_width = bucket(max_width)
        if cache.max_len < self.max_width:
            raise ValueError(f"a slot of {cache.max_len} positions cannot hold a padded row of {self.max_width}")
        self.fn: Callable[..., Any] = torch.compile(decoder, dynamic=False, backend=backend, mode=mode)
        self.shapes: set[tuple[int, int, int]] = set()

    def fits(self, rows: Sequence[Row]) -> bool:
        return max(row.width for row in rows) <= self.max_width

    def __call__(self, cache: SlotCache, slots: Sequence[int], starts: Sequence[int], rows: Sequence[Row],
                 dtype: torch.dtype, sliding_window: int | None, device: torch.device) -> torch.Tensor:
        """Last-layer states [len(rows), W, H] of the real rows (W = the padded width)."""
        num = len(rows)
        padding = bucket(num) - num
        width = bucket(max(row.width for row in rows))
        slots = [*slots, *[self.scratch] * padding]
        starts = [*starts, *[0] * padding]
        rows = [*rows, *[Row.chunk([0])] * padding]
        kv_len = bucketed_key_length(max(starts) + width, cache.max_len)
        cache.begin(slots, starts, width, kv_len=kv_len, allow_view=False)  # a slot number would specialise
        try:
            ids, positions, mask = batch_inputs(rows, starts, kv_len, dtype, sliding_window, width=width)
            out = self.fn(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                          past_key_values=cache, use_cache=True)
        finally:
            cache.end()
        self.shapes.add((len(slots), width, kv_len))
        hidden: torch.Tensor = out.last_hidden_state[:num]
        return hidden

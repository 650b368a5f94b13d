"""KV-cache rollback and compaction on a transformers `DynamicCache`.

We edit each layer's `keys` / `values` ([B, heads, S, head_dim]) directly instead of calling
`DynamicCache.crop`, whose argument changed meaning across 5.x releases (an absolute length in
early 5.x; only a negative "tokens to remove" from 5.2x on). Caches are created without a config,
so every layer is a plain `DynamicLayer` whose length is the tensor's length.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache


def new_cache() -> DynamicCache:
    """A cache of plain full-attention layers (no sliding-window trimming)."""
    return DynamicCache()


def cache_length(cache: DynamicCache) -> int:
    return int(cache.get_seq_length())


def crop(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` positions of every layer."""
    if length < 0 or length > cache_length(cache):
        raise ValueError(f"cannot crop a cache of {cache_length(cache)} positions to {length}")
    layers: list[Any] = list(cache.layers)  # DynamicLayer: .keys / .values [B, heads, S, D]
    for layer in layers:
        if getattr(layer, "is_initialized", True) and layer.keys is not None:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def keep_positions(cache: DynamicCache, start: int, positions: torch.Tensor) -> None:
    """Keep positions [0, start) followed by `positions` (each >= start, in the given order).

    This is the compaction after verification: the accepted path's entries move right after the
    committed prefix and everything else is dropped. Only the moved entries are copied (a gather of
    `len(positions)` rows, written in place); the crop is a view, so the prefix is never copied.
    """
    length = cache_length(cache)
    if positions.numel() and (int(positions.min()) < start or int(positions.max()) >= length):
        raise ValueError(f"positions must lie in [{start}, {length}), got {positions.tolist()}")
    num = positions.numel()
    source = positions.cpu().to(torch.long)
    is_identity = bool(torch.equal(source, torch.arange(start, start + num)))
    layers: list[Any] = list(cache.layers)  # DynamicLayer: .keys / .values [B, heads, S, D]
    with torch.inference_mode():
        for layer in layers:
            if not getattr(layer, "is_initialized", True) or layer.keys is None:
                continue
            if not is_identity:  # rows move down only (source >= destination): gather first, then write
                device_index = source.to(layer.keys.device)
                layer.keys[..., start:start + num, :] = layer.keys.index_select(-2, device_index)
                layer.values[..., start:start + num, :] = layer.values.index_select(-2, device_index)
            layer.keys = layer.keys[..., :start + num, :]
            layer.values = layer.values[..., :start + num, :]

"""A preallocated slot KV cache for batched forwards (docs/design.md §5).

Per layer one key and one value tensor `[num_slots, kv_heads, max_len, head_dim]`, allocated once at
start-up, so the verifier's memory is known before the first request. A request owns one slot for its
life: its committed prefix at positions [0, length), then scratch room for root + tree.

A forward over B requests goes like this:

    cache.begin(slots, starts, width)   # row b writes its `width` new entries at starts[b] ..
    model(..., past_key_values=cache)   # every layer: one index_put of all rows, then a view to attend
    cache.end()
    cache.compact(slots, starts, keep)  # after acceptance: every row's kept entries moved in one gather

Rollback and release only change lengths; nothing is ever concatenated. The layer objects speak
transformers' `Cache` API (`update` returns the keys and values to attend over), so any HF decoder
that takes a 4-D additive mask and explicit position ids runs on it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class CacheFullError(ValueError):
    """A request needs more positions than a slot holds, or no slot is free."""


@dataclass(frozen=True)
class _Batch:
    slots: torch.Tensor  # [B] slot of each row (on the cache's device)
    index: torch.Tensor  # [B, kv_heads, W] where row b writes its W new entries: rows of a layer's tensor
    # viewed as [-1, head_dim] (slot, head, position flattened), computed once per forward for every layer
    kv_len: int  # keys every row attends over: [0, kv_len)
    first: int | None  # the slots are first, first+1, ...: attend over a view instead of a gather


class SlotLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]
    """One decoder layer's view of the slot cache (transformers calls `update` inside attention)."""

    is_compileable = False
    is_croppable = False

    def __init__(self, owner: SlotCache, index: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.owner, self.index = owner, index
        self.keys, self.values = owner.keys[index], owner.values[index]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.owner.write(self.index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        batch = self.owner.batch
        return (batch.kv_len if batch is not None else query_length), 0

    def get_seq_length(self) -> int:
        return 0  # unused: every forward passes explicit position ids and a 4-D mask

    def get_max_length(self) -> int:
        return self.owner.max_len


class SlotCache(Cache):
    """Fixed slots of fixed length for every layer; lengths live in `lengths` (per slot)."""

    def __init__(self, num_layers: int, num_slots: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        if min(num_layers, num_slots, kv_heads, max_len, head_dim) < 1:
            raise ValueError("a slot cache needs at least one layer, slot, head, position and dimension")
        shape = (num_slots, kv_heads, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_slots, self.max_len = num_slots, max_len
        self.lengths = [0] * num_slots
        self._free = list(range(num_slots - 1, -1, -1))  # pop() gives the lowest slot first
        self.batch: _Batch | None = None
        super().__init__(layers=[SlotLayer(self, i) for i in range(num_layers)])

    @classmethod
    def for_model(cls, config: Any, num_slots: int, max_len: int, dtype: torch.dtype,
                  device: str | torch.device) -> SlotCache:
        """Shaped for an HF decoder config (Llama, Qwen2, Mistral, ...)."""
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(int(config.num_hidden_layers), num_slots, kv_heads, max_len, head_dim, dtype, device)

    @staticmethod
    def bytes_needed(config: Any, num_slots: int, max_len: int, dtype: torch.dtype) -> int:
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        element = torch.tensor([], dtype=dtype).element_size()
        return 2 * int(config.num_hidden_layers) * num_slots * kv_heads * max_len * head_dim * element

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    @property
    def num_free(self) -> int:
        return len(self._free)

    # ---- slots ---------------------------------------------------------------------------------------

    def allocate(self) -> int:
        if not self._free:
            raise CacheFullError(f"all {self.num_slots} cache slots are in use")
        slot = self._free.pop()
        self.lengths[slot] = 0
        return slot

    def release(self, slot: int) -> None:
        if slot in self._free or not 0 <= slot < self.num_slots:
            raise ValueError(f"slot {slot} is not allocated")
        self.lengths[slot] = 0
        self._free.append(slot)
        self._free.sort(reverse=True)

    def resize(self, num_slots: int, max_len: int) -> None:
        """Grow to at least `num_slots` slots of `max_len` positions, keeping every slot's entries.

        For caches that size themselves by the load (a drafter's); the verifier's is fixed at start-up.
        """
        num_slots, max_len = max(num_slots, self.num_slots), max(max_len, self.max_len)
        if (num_slots, max_len) == (self.num_slots, self.max_len):
            return
        for tensors in (self.keys, self.values):
            for i, old in enumerate(tensors):
                new = old.new_zeros(num_slots, old.shape[1], max_len, old.shape[3])
                new[: self.num_slots, :, : self.max_len] = old
                tensors[i] = new
        for layer in self.layers:
            assert isinstance(layer, SlotLayer)
            layer.keys, layer.values = self.keys[layer.index], self.values[layer.index]
        self._free = sorted([*self._free, *range(self.num_slots, num_slots)], reverse=True)
        self.lengths += [0] * (num_slots - self.num_slots)
        self.num_slots, self.max_len = num_slots, max_len

    # ---- one forward ---------------------------------------------------------------------------------

    def begin(self, slots: Sequence[int], starts: Sequence[int], width: int, kv_len: int | None = None,
              allow_view: bool = True) -> int:
        """Row b of the next forward writes `width` entries at starts[b] .. of slot slots[b].

        Returns the key length every row attends over (the mask's last dimension): the longest row's end,
        or `kv_len` when given (a compiled forward's bucketed length). Consecutive slots are attended as
        a view unless `allow_view` is False.
        """
        if len(slots) != len(starts) or not slots:
            raise ValueError("begin() needs one start per slot and at least one row")
        ends = [s + width for s in starts]
        if max(ends) > self.max_len:
            raise CacheFullError(f"a row would reach position {max(ends)}, beyond the slot length {self.max_len}")
        if kv_len is not None and not max(ends) <= kv_len <= self.max_len:
            raise ValueError(f"kv_len {kv_len} must lie in [{max(ends)}, {self.max_len}]")
        device = self.keys[0].device
        kv_len = max(ends) if kv_len is None else kv_len
        is_run = allow_view and list(slots) == list(range(slots[0], slots[0] + len(slots)))
        first = slots[0] if is_run else None
        positions = torch.tensor(starts, dtype=torch.long)[:, None, None] + torch.arange(width)[None, None, :]
        kv_heads = self.keys[0].shape[1]
        rows = torch.tensor(list(slots), dtype=torch.long)[:, None, None] * kv_heads + torch.arange(kv_heads)[:, None]
        self.batch = _Batch(torch.tensor(list(slots), dtype=torch.long, device=device),
                            (rows * self.max_len + positions).to(device), kv_len, first)
        return kv_len

    def end(self) -> None:
        self.batch = None

    def write(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this forward's new entries ([B, kv_heads, W, D]); return keys / values to attend over."""
        batch = self.batch
        if batch is None:
            raise RuntimeError("SlotCache.begin() must be called before a forward")
        keys, values = self.keys[layer], self.values[layer]
        # a layer may bring fewer entries than `width` (Hidden Transfer's slots join the upper layers only)
        index = batch.index[..., : key_states.shape[2]].reshape(-1)
        dim = keys.shape[-1]
        keys.view(-1, dim).index_copy_(0, index, key_states.to(keys.dtype).reshape(-1, dim))
        values.view(-1, dim).index_copy_(0, index, value_states.to(values.dtype).reshape(-1, dim))
        if batch.first is not None:
            rows = slice(batch.first, batch.first + batch.slots.numel())
            return keys[rows, :, : batch.kv_len], values[rows, :, : batch.kv_len]
        return keys[batch.slots, :, : batch.kv_len], values[batch.slots, :, : batch.kv_len]

    # ---- after a forward -----------------------------------------------------------------------------

    def compact(self, slots: Sequence[int], starts: Sequence[int], keep: Sequence[Sequence[int]]) -> None:
        """Row b keeps the entries at starts[b] + keep[b][j], moved to starts[b] + j, for every layer at once.

        keep[b] holds distinct indices in any order: every moved entry is gathered before any is written.
        Rows that keep a prefix of their entries move nothing. Lengths become starts[b] + len(keep[b]).
        """
        moves = [(slot, start + j, start + k) for slot, start, kept in zip(slots, starts, keep, strict=True)
                 for j, k in enumerate(kept) if k != j]
        for slot, start, kept in zip(slots, starts, keep, strict=True):
            self.lengths[slot] = start + len(kept)
        if not moves:
            return
        device = self.keys[0].device
        slot_index, destination, source = (torch.tensor(column, dtype=torch.long, device=device)
                                           for column in zip(*moves, strict=True))
        for tensor in (*self.keys, *self.values):  # advanced index on dims 0 and 2: [M, kv_heads, D]
            tensor[slot_index, :, destination] = tensor[slot_index, :, source]

    def copy_prefix(self, source: int, destination: int, length: int) -> None:
        """Slot `destination` gets a copy of the first `length` positions of `source` (a shared prompt)."""
        if not 0 <= length <= self.lengths[source]:
            raise ValueError(f"slot {source} holds {self.lengths[source]} positions, cannot copy {length}")
        for tensor in (*self.keys, *self.values):
            tensor[destination, :, :length] = tensor[source, :, :length]
        self.lengths[destination] = length

    def set_length(self, slot: int, length: int) -> None:
        """Rollback: the slot keeps its first `length` positions (nothing is copied)."""
        if not 0 <= length <= self.max_len:
            raise ValueError(f"length {length} is outside [0, {self.max_len}]")
        self.lengths[slot] = length

    def entries(self, slot: int, length: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) [kv_heads, length, D] of a slot's valid prefix (tests, debugging)."""
        n = self.lengths[slot] if length is None else length
        return [(k[slot, :, :n], v[slot, :, :n]) for k, v in zip(self.keys, self.values, strict=True)]

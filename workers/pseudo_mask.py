"""Where Hidden Transfer's pseudo slots sit in a batched verification forward, and what they see (pure).

Row b of the forward brings its real entries (root + tree nodes, padded to the batch width W), then the
pseudo slots of its anchors (the nodes most likely to be the last accepted one), k per anchor, padded to
the batch's P columns. Slot (a, j) of anchor entry a is at position start + offset(a) + 1 + j and sees the
row's cached prefix, entry a and its ancestors, and the slots (a, 0..j). No real entry ever sees a slot
(the real mask from `batch_inputs` stops at W), and a padding slot sees only itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workers.batch_mask import Row


@dataclass(frozen=True)
class PseudoPlan:
    """The pseudo part of one forward: P = A * k columns after the W real ones."""

    anchors: torch.Tensor  # [B, A] long: the real entry whose state feeds each anchor (padding: 0)
    num_anchors: tuple[int, ...]  # per row
    positions: torch.Tensor  # [B, P] long
    mask: torch.Tensor  # [B, 1, P, kv_len] additive

    @property
    def num_offsets(self) -> int:
        return self.positions.shape[1] // max(self.anchors.shape[1], 1)


def slot_pattern(num_anchors: int, num_offsets: int) -> torch.Tensor:
    """[P, P] bool: slot (a, j) sees slots (a, 0..j) of its own anchor (anchor-major order)."""
    index = torch.arange(num_anchors * num_offsets)
    same = (index[:, None] // num_offsets) == (index[None, :] // num_offsets)
    return same & ((index[None, :] % num_offsets) <= (index[:, None] % num_offsets))


def pseudo_plan(rows: Sequence[Row], starts: Sequence[int], anchors: Sequence[Sequence[int]], num_offsets: int,
                width: int, kv_len: int, dtype: torch.dtype, sliding_window: int | None = None) -> PseudoPlan:
    """The plan for rows written at `starts` (real entries in [start, start + W), slots after them)."""
    num, k = len(rows), num_offsets
    num_anchors = max((len(a) for a in anchors), default=0)
    total = num_anchors * k
    anchor_ids = torch.zeros(num, num_anchors, dtype=torch.long)
    real_visible = torch.zeros(num, width, width, dtype=torch.bool)
    real_offsets = torch.zeros(num, width, dtype=torch.long)
    is_slot = torch.zeros(num, total, dtype=torch.bool)
    for b, (row, chosen) in enumerate(zip(rows, anchors, strict=True)):
        if any(not 0 <= a < row.width for a in chosen):
            raise ValueError(f"anchors {list(chosen)} must be entries of a row of {row.width}")
        anchor_ids[b, : len(chosen)] = torch.tensor(list(chosen), dtype=torch.long)
        real_visible[b, : row.width, : row.width] = row.visible
        real_offsets[b, : row.width] = row.offsets
        is_slot[b, : len(chosen) * k] = True
    slot_anchor = anchor_ids.repeat_interleave(k, dim=1)  # [B, P]
    slot_offset = torch.arange(k).repeat(num_anchors)  # [P]
    start = torch.tensor(list(starts), dtype=torch.long)
    positions = start[:, None] + real_offsets.gather(1, slot_anchor) + 1 + slot_offset[None, :]  # [B, P]
    local = torch.zeros(num, total, width + total, dtype=torch.bool)  # over the row's real entries, then slots
    local[:, :, :width] = real_visible.gather(1, slot_anchor[:, :, None].expand(num, total, width))
    local[:, :, width:] = slot_pattern(num_anchors, k)[None]
    local &= is_slot[:, :, None]
    local[:, torch.arange(total), width + torch.arange(total)] = True  # every slot sees itself (padding: only that)
    keys = torch.arange(kv_len)
    relative = keys[None, :] - start[:, None]  # [B, K]
    in_new = (relative >= 0) & (relative < width + total)
    visible = local.gather(2, relative.clamp(0, width + total - 1)[:, None, :].expand(num, total, kv_len))
    visible &= in_new[:, None, :]
    prefix = (relative < 0)[:, None, :] & is_slot[:, :, None]  # [B, P, K]
    for b, row in enumerate(rows):
        if row.prefix_visible is not None and len(anchors[b]):
            seen = row.prefix_visible[slot_anchor[b, : len(anchors[b]) * k]]  # [n, start]
            prefix[b, : seen.shape[0], : starts[b]] = seen
    visible |= prefix
    if sliding_window is not None:
        new_positions = torch.cat([start[:, None] + real_offsets, positions], dim=1)  # [B, W + P]
        key_positions = torch.where(in_new, new_positions.gather(1, relative.clamp(0, width + total - 1)),
                                    keys[None, :])
        visible &= (positions[:, :, None] - key_positions[:, None, :]) < sliding_window
    mask = torch.zeros(num, 1, total, kv_len, dtype=dtype)
    mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)
    return PseudoPlan(anchor_ids, tuple(len(a) for a in anchors), positions, mask)


def training_mask(length: int, num_offsets: int, anchors: torch.Tensor | None = None) -> torch.Tensor:
    """[A*k, T + A*k] bool for training on a window of T real tokens with slots at the anchor positions
    (default: all T): slot (a, j), at row a*k + j, sees real positions <= anchors[a] and slots (a, 0..j), as
    in the verification forward (its keys: T real, then A*k slots)."""
    anchors = torch.arange(length) if anchors is None else anchors
    anchor = anchors.repeat_interleave(num_offsets)  # [A*k]
    real = torch.arange(length, device=anchor.device)[None, :] <= anchor[:, None]  # [A*k, T]
    return torch.cat([real, slot_pattern(anchors.numel(), num_offsets).to(anchor.device)], dim=1)

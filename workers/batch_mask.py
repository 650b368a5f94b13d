"""Inputs of one batched forward over many requests' slots (pure functions).

Every row b brings n_b new entries (a tree: root + nodes; a prompt chunk; a drafter's step) that see
the row's cached prefix [0, start_b) (all of it, or what `prefix_visible` says) and, among themselves,
what their local visibility says. Rows are padded to a common width W; a padding entry sees only
itself, is never seen by anyone, and is overwritten by the row's next forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from workers.tree import DraftTree


@dataclass(frozen=True)
class Row:
    """One request's part of a forward."""

    token_ids: torch.Tensor  # [n] long
    visible: torch.Tensor  # [n, n] bool: entry i sees entry j
    offsets: torch.Tensor  # [n] long: position of entry i minus the row's start
    prefix_visible: torch.Tensor | None = None  # [n, start] bool: which cached entries i sees (None: all)

    @property
    def width(self) -> int:
        return int(self.token_ids.numel())

    @staticmethod
    def tree(root: int, tree: DraftTree) -> Row:
        """Root + nodes: each node sees the root and its own ancestors; positions are start + depth."""
        n = tree.num_nodes
        visible = torch.zeros(n + 1, n + 1, dtype=torch.bool)
        visible[:, 0] = True
        if n:
            visible[1:, 1:] = tree.ancestors()
        ids = torch.cat([torch.tensor([root], dtype=torch.long), tree.token_ids.to(torch.long).cpu()])
        return Row(ids, visible, torch.cat([torch.zeros(1, dtype=torch.long), tree.depths.cpu()]))

    @staticmethod
    def chunk(token_ids: Sequence[int]) -> Row:
        """A run of consecutive tokens (a prompt chunk): causal among themselves."""
        n = len(token_ids)
        return Row(torch.tensor(list(token_ids), dtype=torch.long), torch.ones(n, n, dtype=torch.bool).tril(),
                   torch.arange(n))

    @staticmethod
    def step(token_ids: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor, start: int) -> Row:
        """A drafter's step: entries at any `positions`, `visible` [n, start + n] over the slot's cached
        entries then the new ones (a drafter's cache holds tree entries, so not every key is a prefix)."""
        return Row(token_ids, visible[:, start:], positions - start, visible[:, :start])


def batch_inputs(rows: Sequence[Row], starts: Sequence[int], kv_len: int, dtype: torch.dtype,
                 sliding_window: int | None = None, width: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [B, W], position_ids [B, W], additive mask [B, 1, W, kv_len]) for rows written at `starts`;
    W = the widest row, or `width` when given (a compiled forward's bucketed width)."""
    num, width = len(rows), max(max(r.width for r in rows), width or 0)
    ids = torch.zeros(num, width, dtype=torch.long)
    offsets = torch.zeros(num, width, dtype=torch.long)
    local = torch.zeros(num, width, width, dtype=torch.bool)
    local[:, torch.arange(width), torch.arange(width)] = True  # padding sees itself (never an empty row)
    for b, row in enumerate(rows):
        n = row.width
        ids[b, :n] = row.token_ids
        offsets[b, :n] = row.offsets
        local[b, :n, :n] = row.visible
    start = torch.tensor(list(starts), dtype=torch.long)
    positions = start[:, None] + offsets  # [B, W]
    keys = torch.arange(kv_len)
    relative = keys[None, :] - start[:, None]  # [B, K]: key k is entry k - start of its row's new ones
    in_new = (relative >= 0) & (relative < width)
    gathered = local.gather(2, relative.clamp(0, width - 1)[:, None, :].expand(num, width, kv_len))
    prefix = (relative < 0)[:, None, :].expand(num, width, kv_len).clone()  # [B, W, K]
    for b, row in enumerate(rows):
        prefix[b, row.width:] = False
        if row.prefix_visible is not None:
            prefix[b, : row.width, : starts[b]] = row.prefix_visible
    visible = prefix | (gathered & in_new[:, None, :])  # [B, W, K]
    if sliding_window is not None:
        key_positions = torch.where(in_new, positions.gather(1, relative.clamp(0, width - 1)), keys[None, :])
        visible &= (positions[:, :, None] - key_positions[:, None, :]) < sliding_window
    mask = torch.zeros(num, 1, width, kv_len, dtype=dtype)
    mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)
    return ids, positions, mask

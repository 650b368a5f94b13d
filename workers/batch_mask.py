"""Inputs of one batched forward over many requests' slots (pure functions).

Every row b brings n_b new entries (a tree: root + nodes; or a prompt chunk) that see the row's
cached prefix [0, start_b) and, among themselves, what their local visibility says. Rows are padded
to a common width W; padding entries see only the prefix and their row's first entry, are never
seen by anyone, and are overwritten by the row's next forward.
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


def batch_inputs(rows: Sequence[Row], starts: Sequence[int], kv_len: int, dtype: torch.dtype,
                 sliding_window: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids [B, W], position_ids [B, W], additive mask [B, 1, W, kv_len]) for rows written at `starts`."""
    num, width = len(rows), max(r.width for r in rows)
    ids = torch.zeros(num, width, dtype=torch.long)
    offsets = torch.zeros(num, width, dtype=torch.long)
    local = torch.zeros(num, width, width, dtype=torch.bool)
    local[:, :, 0] = True  # padding rows see the first entry (never a row with nothing to attend to)
    for b, row in enumerate(rows):
        n = row.width
        ids[b, :n] = row.token_ids
        offsets[b, :n] = row.offsets
        local[b, :n, :n] = row.visible
        local[b, n:, n:] = False
    start = torch.tensor(list(starts), dtype=torch.long)
    positions = start[:, None] + offsets  # [B, W]
    keys = torch.arange(kv_len)
    relative = keys[None, :] - start[:, None]  # [B, K]: key k is entry k - start of its row's new ones
    in_new = (relative >= 0) & (relative < width)
    gathered = local.gather(2, relative.clamp(0, width - 1)[:, None, :].expand(num, width, kv_len))
    visible = (relative < 0)[:, None, :] | (gathered & in_new[:, None, :])  # [B, W, K]
    if sliding_window is not None:
        key_positions = torch.where(in_new, positions.gather(1, relative.clamp(0, width - 1)), keys[None, :])
        visible &= (positions[:, :, None] - key_positions[:, None, :]) < sliding_window
    mask = torch.zeros(num, 1, width, kv_len, dtype=dtype)
    mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)
    return ids, positions, mask

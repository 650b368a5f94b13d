"""Tree attention masks and position ids (pure functions).

A tree forward feeds root + nodes after a cached prefix of `past_len` positions. Each query sees
the whole prefix, the root and its own ancestors; its position id is `past_len + depth`.
"""

from __future__ import annotations

import torch

from workers.tree import DraftTree


def additive_mask(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[Q, K] bool visibility -> [1, 1, Q, K] additive mask (0 where visible, dtype min elsewhere)."""
    mask = torch.zeros(visible.shape, dtype=dtype)
    mask.masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None, None]


def tree_visibility(tree: DraftTree, past_len: int) -> torch.Tensor:
    """[N+1, past_len+N+1] bool: row 0 is the root, row i+1 is node i."""
    n = tree.num_nodes
    visible = torch.zeros(n + 1, past_len + n + 1, dtype=torch.bool)
    visible[:, : past_len + 1] = True  # prefix and root
    visible[1:, past_len + 1:] = tree.ancestors()
    return visible


def tree_positions(tree: DraftTree, past_len: int) -> torch.Tensor:
    """[N+1] position ids of root + nodes."""
    return past_len + torch.cat([torch.zeros(1, dtype=torch.long), tree.depths])


def apply_sliding_window(visible: torch.Tensor, query_positions: torch.Tensor, key_positions: torch.Tensor,
                         window: int) -> torch.Tensor:
    """Hide keys that lie `window` or more positions before their query (Mistral-style windows)."""
    return visible & ((query_positions[:, None] - key_positions[None, :]) < window)


def tree_mask(tree: DraftTree, past_len: int, dtype: torch.dtype,
              sliding_window: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive mask [1, 1, N+1, past_len+N+1] and position ids [1, N+1] for a tree forward."""
    visible = tree_visibility(tree, past_len)
    positions = tree_positions(tree, past_len)
    if sliding_window is not None:
        key_positions = torch.cat([torch.arange(past_len), positions])
        visible = apply_sliding_window(visible, positions, key_positions, sliding_window)
    return additive_mask(visible, dtype), positions[None]

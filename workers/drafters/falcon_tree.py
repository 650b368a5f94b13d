"""Pure tensor helpers of the Falcon session: who sees whom in one drafter forward, and how the k
predicted distributions of each expanded block become tree nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workers.tree import ROOT, DraftTree
from workers.tree_policy import TreeConfig, children_to_add

COMMITTED, TREE_PAIR, PLACEHOLDER = 0, 1, 2


@dataclass(frozen=True)
class Entries:
    """Descriptors of KV entries (cached or queried), one row each.

    kinds: [n] COMMITTED / TREE_PAIR / PLACEHOLDER; positions: [n] position ids;
    nodes: [n] a tree pair's own node, a placeholder's block node (ROOT for the root's block), else ROOT;
    blocks: [n] a placeholder's block id, else -1.
    """

    kinds: torch.Tensor
    positions: torch.Tensor
    nodes: torch.Tensor
    blocks: torch.Tensor

    @staticmethod
    def build(kind: int, positions: torch.Tensor, nodes: torch.Tensor | None = None,
              blocks: torch.Tensor | None = None) -> Entries:
        n = positions.numel()
        minus_one = torch.full((n,), -1, dtype=torch.long)
        return Entries(torch.full((n,), kind, dtype=torch.long), positions.to(torch.long),
                       minus_one if nodes is None else nodes.to(torch.long),
                       minus_one if blocks is None else blocks.to(torch.long))

    @staticmethod
    def cat(parts: list[Entries]) -> Entries:
        return Entries(*(torch.cat([getattr(p, name) for p in parts])
                         for name in ("kinds", "positions", "nodes", "blocks")))


def visibility(queries: Entries, keys: Entries, ancestors: torch.Tensor) -> torch.Tensor:
    """[Q, K] bool: committed keys are causal by position; a tree pair key is seen by the queries
    whose (block) node has it as ancestor-or-self; a placeholder key only by its own block.

    `ancestors` is DraftTree.ancestors() ([N, N], (i, j) True when j is i or an ancestor of i).
    """
    committed = (keys.kinds == COMMITTED)[None, :] & (keys.positions[None, :] <= queries.positions[:, None])
    q_in_tree = (queries.kinds != COMMITTED) & (queries.nodes >= 0)  # [Q]
    k_is_pair = keys.kinds == TREE_PAIR  # [K]
    if ancestors.numel():
        tree = ancestors[queries.nodes.clamp(min=0)][:, keys.nodes.clamp(min=0)]  # [Q, K]
    else:
        tree = torch.zeros(queries.kinds.numel(), keys.kinds.numel(), dtype=torch.bool)
    tree = tree & q_in_tree[:, None] & k_is_pair[None, :]
    same_block = (keys.kinds == PLACEHOLDER)[None, :] & (queries.kinds == PLACEHOLDER)[:, None] & (
        keys.blocks[None, :] == queries.blocks[:, None])
    return committed | tree | same_block


def block_tops(probs: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[..., V] distributions -> ([..., K] probabilities, [..., K] tokens) of their `top_k` most likely
    tokens, most likely first (K = min(top_k, V))."""
    top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return top.values, top.indices


def expand_blocks(tree: DraftTree, nodes: torch.Tensor, tops: tuple[torch.Tensor, torch.Tensor],
                  outputs: torch.Tensor, config: TreeConfig) -> tuple[DraftTree, torch.Tensor]:
    """Add the children predicted for expanded `nodes` ([E], ROOT allowed).

    tops: `block_tops` of the [E, k, V] distributions of depths d+1..d+k, at least `config.top_k` wide;
    outputs: [E, k, H] the features that predicted them.
    Level 1 hangs under each node, level j+1 under the rank-0 child of level j (skipped once that child is
    missing or the depth budget is reached). Returns the new tree and [num_added, H] features of the new
    nodes, in tree order.
    """
    all_probs, all_tokens = tops[0][..., : config.top_k].cpu(), tops[1][..., : config.top_k].cpu()  # [E, k, K]
    num_blocks, block_size = all_probs.shape[0], all_probs.shape[1]
    node_list = nodes.numpy()
    parents = node_list.copy()  # [E] parent of the current level, per block; -2 = chain stopped
    depths = np.zeros_like(node_list)  # [E] depth of each expanded node (0 = root)
    depths[node_list >= 0] = tree.depths.numpy()[node_list[node_list >= 0]]
    added: list[torch.Tensor] = []
    for level in range(block_size):  # k levels, each a handful of array ops over all blocks
        rows = np.flatnonzero((parents >= ROOT) & (depths + level + 1 <= config.living_depth))  # [A]
        if not rows.size:
            break
        top_probs, top_tokens = all_probs[rows, level], all_tokens[rows, level]  # [A, K]
        level_parents = parents[rows]  # [A]
        if config.is_static:  # only the ranks the static paths name
            child_parents_t, tokens, child_probs = children_to_add(tree, torch.from_numpy(level_parents),
                                                                   top_tokens, top_probs, config)
            child_parents = child_parents_t.numpy()
            local = (child_parents[:, None] == level_parents[None, :]).argmax(axis=1)  # [C] row in `rows`
            is_first = (tokens == top_tokens[torch.from_numpy(local), 0]).numpy()  # rank-0 child at this level
        else:  # every block's top-k, in rank order
            width = top_tokens.shape[1]
            local = np.repeat(np.arange(rows.size), width)
            child_parents = level_parents[local]
            tokens, child_probs = top_tokens.reshape(-1), top_probs.reshape(-1)
            is_first = np.tile(np.arange(width) == 0, rows.size)
        start = tree.num_nodes
        tree = tree.add(torch.from_numpy(child_parents), tokens, child_probs)
        added.append(outputs[torch.from_numpy(rows[local]).to(outputs.device), level])
        parents = np.full(num_blocks, -2, dtype=np.int64)
        parents[rows[local[is_first]]] = start + np.flatnonzero(is_first)
    features = torch.cat(added) if added else outputs.new_zeros(0, outputs.shape[-1])
    return tree, features

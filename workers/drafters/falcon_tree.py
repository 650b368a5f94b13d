"""Pure tensor helpers of the Falcon session: who sees whom in one drafter forward, and how the k
predicted distributions of each expanded block become tree nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def expand_blocks(tree: DraftTree, nodes: torch.Tensor, probs: torch.Tensor, outputs: torch.Tensor,
                  config: TreeConfig) -> tuple[DraftTree, torch.Tensor]:
    """Add the children predicted for expanded `nodes` ([E], ROOT allowed).

    probs: [E, k, V] distributions of depths d+1..d+k; outputs: [E, k, H] the features that predicted them.
    Level 1 hangs under each node, level j+1 under the rank-0 child of level j (skipped once that child is
    missing or the depth budget is reached). Returns the new tree and [num_added, H] features of the new
    nodes, in tree order.
    """
    num_blocks, block_size = probs.shape[0], probs.shape[1]
    parents = nodes.clone()  # [E] parent of the current level, per block; -2 = chain stopped
    depths = torch.zeros_like(nodes)  # [E] depth of each expanded node (0 = root)
    depths[nodes >= 0] = tree.depths[nodes[nodes >= 0]]
    added: list[torch.Tensor] = []
    for level in range(block_size):  # k levels, each a handful of tensor ops over all blocks
        alive = (parents >= ROOT) & (depths + level + 1 <= config.living_depth)
        if not bool(alive.any()):
            break
        rows = torch.nonzero(alive).flatten()  # [A]
        top = probs[rows.to(probs.device), level].topk(min(config.top_k, probs.shape[-1]), dim=-1)
        top_probs, top_tokens = top.values.cpu(), top.indices.cpu()  # [A, K]
        level_parents = parents[rows]  # [A]
        child_parents, tokens, child_probs = children_to_add(tree, level_parents, top_tokens, top_probs,
                                                             config)
        local = (child_parents[:, None] == level_parents[None, :]).int().argmax(dim=1)  # [C] row in `rows`
        start = tree.num_nodes
        tree = tree.add(child_parents, tokens, child_probs)
        added.append(outputs[rows[local].to(outputs.device), level])
        is_first = tokens == top_tokens[local, 0]  # rank-0 child of its block at this level
        parents = torch.full((num_blocks,), -2, dtype=torch.long)
        parents[rows[local[is_first]]] = start + torch.nonzero(is_first).flatten()
    features = torch.cat(added) if added else outputs.new_zeros(0, outputs.shape[-1])
    return tree, features

"""Tree policies: which nodes a drafter expands next and which children it adds.

Two policies share one interface. Dynamic: best-first by cumulative drafter probability under the
`total_tokens` / `depth` / `top_k` budgets (EAGLE-2 style). Static: a fixed list of paths of child
ranks (Falcon's custom-designed decoding tree), e.g. ((0,), (1,), (0, 0)).
"""

from __future__ import annotations

import numpy as np
import torch

from protocol.params import TreeConfig
from workers.tree import ROOT, DraftTree

__all__ = ["TreeConfig", "children_to_add", "expansion_values", "leaves_to_prune", "pick_expansions",
           "rank_path_codes", "sibling_ranks"]


def sibling_ranks(tree: DraftTree) -> torch.Tensor:
    """[N] rank of each node among its siblings by drafter probability (0 = most likely)."""
    n = tree.num_nodes
    same_parent = tree.parents[:, None] == tree.parents[None, :]
    index = torch.arange(n)
    beats = (tree.probs[None, :] > tree.probs[:, None]) | (
        (tree.probs[None, :] == tree.probs[:, None]) & (index[None, :] < index[:, None]))
    return (same_parent & beats).sum(dim=1)


def rank_path_codes(tree: DraftTree, top_k: int) -> torch.Tensor:
    """[N] integer code of each node's root-to-node path of sibling ranks (see `_path_code`)."""
    if tree.num_nodes == 0:
        return torch.zeros(0, dtype=torch.long)
    digits = sibling_ranks(tree) + 1
    weights = (top_k + 1) ** (tree.depths[:, None] - tree.depths[None, :])  # [N, N]
    return (tree.ancestors().long() * weights * digits[None, :]).sum(dim=1)


def pick_expansions(tree: DraftTree, config: TreeConfig, limit: int | None = None) -> torch.Tensor:
    """Nodes to expand in the next drafter step (ROOT included), best first, at most `limit` (default
    `top_k`); empty = done."""
    has_children = torch.zeros(tree.num_nodes, dtype=torch.bool)
    has_children[tree.parents[tree.parents >= 0]] = True
    root_open = not bool((tree.parents == ROOT).any())
    if root_open:
        return torch.tensor([ROOT])
    if tree.num_nodes >= config.living_cap:
        return torch.zeros(0, dtype=torch.long)
    open_nodes = ~has_children & (tree.depths < config.living_depth)
    if config.is_static:
        codes = rank_path_codes(tree, config.top_k)
        open_nodes &= _has_static_children(codes, config)
    candidates = torch.nonzero(open_nodes).flatten()
    if candidates.numel() == 0:
        return candidates
    scores = tree.path_probs()[candidates]
    order = torch.argsort(scores, descending=True, stable=True)[: min(limit or config.top_k, config.top_k)]
    return candidates[order]


def leaves_to_prune(tree: DraftTree, config: TreeConfig, added_per_expansion: int) -> torch.Tensor:
    """Leaves a living tree at its cap drops so that it can keep growing (sorted indices; empty: none).

    A full tree stops growing, and the drafter idles until the next commit. Instead, the open leaves a
    step would expand next (the likeliest, best first) each displace the `added_per_expansion` least
    likely leaves, as long as the leaf is worth more than those together (drafter path probabilities:
    the expected number of a node's path entries the target accepts). Whatever exceeds the cap already
    (a step may overshoot it) goes first, least likely first, when at least one expansion is worth it;
    when none is, nothing is dropped and the tree stops growing. A parent's most likely child is never
    dropped, so every expanded node keeps a child and "expanded" still means "has children". Static
    trees and `prune_living: false` never prune.
    """
    n = tree.num_nodes
    if config.is_static or not config.prune_living or n < config.living_cap:
        return torch.zeros(0, dtype=torch.long)
    parents, depths = tree.parents.numpy(), tree.depths.numpy()
    values = tree.path_probs().numpy()
    is_leaf = np.ones(n, dtype=bool)
    is_leaf[parents[parents >= 0]] = False
    by_parent = np.lexsort((np.arange(n), -tree.probs.numpy(), parents))  # each parent's children, best first
    is_best = np.zeros(n, dtype=bool)
    is_best[by_parent[np.r_[True, parents[by_parent][1:] != parents[by_parent][:-1]]]] = True
    expand = np.flatnonzero(is_leaf & (depths < config.living_depth))
    expand = expand[np.argsort(-values[expand], kind="stable")][: config.top_k]
    pool = np.setdiff1d(np.flatnonzero(is_leaf & ~is_best), expand)  # the leaves to expand stay
    pool = pool[np.argsort(values[pool], kind="stable")]  # least likely first
    excess = n - config.living_cap
    drop, pool = pool[:excess], pool[excess:]
    num_expansions = 0
    for leaf in expand:
        if pool.size < added_per_expansion or values[leaf] <= values[pool[:added_per_expansion]].sum():
            break
        drop, pool = np.concatenate([drop, pool[:added_per_expansion]]), pool[added_per_expansion:]
        num_expansions += 1
    if not num_expansions:  # nothing worth growing: the tree stays as it is
        return torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(np.sort(drop).astype(np.int64))


def expansion_values(tree: DraftTree, config: TreeConfig, nodes: torch.Tensor | None = None) -> torch.Tensor:
    """Path probabilities of the nodes `pick_expansions` would pick (or did: `nodes`), best first (the root
    is worth 1)."""
    nodes = pick_expansions(tree, config) if nodes is None else nodes
    if nodes.numel() == 0:
        return torch.zeros(0)
    probs = torch.ones(nodes.numel())
    inner = nodes >= 0
    probs[inner] = tree.path_probs()[nodes[inner]]
    return probs


def _has_static_children(codes: torch.Tensor, config: TreeConfig) -> torch.Tensor:
    child_codes = torch.tensor(sorted(config.spec_codes), dtype=torch.long)
    parent_codes = torch.div(child_codes - 1, config.top_k + 1, rounding_mode="floor")  # strip last rank
    return torch.isin(codes, parent_codes)


def children_to_add(tree: DraftTree, nodes: torch.Tensor, topk_tokens: torch.Tensor, topk_probs: torch.Tensor,
                    config: TreeConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Children for expanded `nodes` from their drafter top-k ([E, K] tokens and probs).

    Returns (parents, token_ids, probs) ready for `DraftTree.add`. Static trees keep only the ranks
    their paths name.
    """
    k = min(config.top_k, topk_tokens.shape[1])
    parents = nodes[:, None].expand(-1, k)
    tokens, probs = topk_tokens[:, :k], topk_probs[:, :k]
    keep = torch.ones_like(tokens, dtype=torch.bool)
    if config.is_static:
        node_codes = torch.zeros(nodes.numel(), dtype=torch.long)
        inner = nodes >= 0
        node_codes[inner] = rank_path_codes(tree, config.top_k)[nodes[inner]]
        child_codes = node_codes[:, None] * (config.top_k + 1) + torch.arange(1, k + 1)[None, :]
        keep = torch.isin(child_codes, torch.tensor(sorted(config.spec_codes), dtype=torch.long))
    return parents[keep], tokens[keep], probs[keep]

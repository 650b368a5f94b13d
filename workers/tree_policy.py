"""Tree policies: which nodes a drafter expands next and which children it adds.

Two policies share one interface. Dynamic: best-first by cumulative drafter probability under the
`total_tokens` / `depth` / `top_k` budgets (EAGLE-2 style). Static: a fixed list of paths of child
ranks (Falcon's custom-designed decoding tree), e.g. ((0,), (1,), (0, 0)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from workers.tree import ROOT, DraftTree


@dataclass(frozen=True)
class TreeConfig:
    """Budgets of a draft tree; YAML `speculation.tree` keys equal these field names."""

    total_tokens: int = 32  # nodes per snapshot sent for verification
    depth: int = 6  # deepest node of a snapshot
    top_k: int = 8  # children per expanded node, and nodes expanded per drafter step
    static_paths: tuple[tuple[int, ...], ...] | None = None  # child-rank paths; None = dynamic tree
    max_living_nodes: int = 0  # cap of the living tree in async mode; 0 = 4 * total_tokens
    max_living_depth: int = 0  # the living tree grows this deep (0 = 2 * depth), so a re-rooted
    # subtree is still `depth` deep; snapshots never go below `depth`
    spec_codes: frozenset[int] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        for key in ("total_tokens", "depth", "top_k"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"tree.{key} must be a positive integer, got {value!r}")
        for key in ("max_living_nodes", "max_living_depth"):
            if getattr(self, key) < 0:
                raise ValueError(f"tree.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.static_paths is not None:
            paths = tuple(tuple(int(r) for r in p) for p in self.static_paths)
            _check_static_paths(paths)
            object.__setattr__(self, "static_paths", paths)
            object.__setattr__(self, "total_tokens", len(paths))
            object.__setattr__(self, "depth", max(len(p) for p in paths))
            object.__setattr__(self, "top_k", max(max(p) for p in paths) + 1)
            object.__setattr__(self, "spec_codes", frozenset(_path_code(p, self.top_k) for p in paths))

    @property
    def living_cap(self) -> int:
        return self.max_living_nodes or 4 * self.total_tokens

    @property
    def living_depth(self) -> int:
        return max(self.max_living_depth or 2 * self.depth, self.depth)

    @property
    def is_static(self) -> bool:
        return self.static_paths is not None


def _check_static_paths(paths: tuple[tuple[int, ...], ...]) -> None:
    if not paths:
        raise ValueError("tree.static_paths must list at least one path")
    known = set(paths)
    for path in paths:
        if not path or min(path) < 0:
            raise ValueError(f"tree.static_paths entry {list(path)} must be a non-empty list of ranks >= 0")
        if len(path) > 1 and path[:-1] not in known:
            raise ValueError(f"tree.static_paths entry {list(path)} has no parent path {list(path[:-1])}")


def _path_code(ranks: tuple[int, ...], top_k: int) -> int:
    code = 0
    for rank in ranks:
        code = code * (top_k + 1) + rank + 1
    return code


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


def pick_expansions(tree: DraftTree, config: TreeConfig) -> torch.Tensor:
    """Nodes to expand in the next drafter step (ROOT included), best first; empty = done."""
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
    order = torch.argsort(scores, descending=True, stable=True)[: config.top_k]
    return candidates[order]


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

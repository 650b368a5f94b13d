"""The batch's node choice as one tensor program over every offered tree (pure functions, no I/O).

Before a batched verification every running request offers one tree per draft source (the drafter's
tree it holds, the verifier's own prompt lookup, Hidden Transfer's guesses). Per offer the verifier needs
its nodes' acceptance estimates (capped along paths), their best-first order and what each width would
commit (workers/cost_model.py: `best_first_order`, `expected_by_width`). Done offer by offer that is a
few dozen small tensor ops each, ~0.5 ms per request on a CPU: at 16 requests a fifth of a step. Here
all offers are laid end to end as one forest and every quantity is computed for all of them at once,
by pointer jumping along paths (log2 of the depth steps), never a loop over offers or nodes. The
results are the per-offer functions'; tests check that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workers.tree import ROOT, DraftTree

Part = tuple[DraftTree, str, np.ndarray]  # a source's tree, the source, its nodes' indices in the offered tree


@dataclass(frozen=True)
class Offer:
    """A tree for request `row` of the batch, at most `limit` of whose nodes may be verified: one draft
    source's (`source` "drafter", "lookup" or "hidden"), or the union of several ("drafter+lookup",
    `parts` saying where each source's nodes went)."""

    row: int
    tree: DraftTree
    source: str
    limit: int
    parts: tuple[Part, ...] = ()

    def sources(self) -> tuple[Part, ...]:
        """Each source's own tree and where its nodes are in `tree` (a single source: everywhere)."""
        return self.parts or ((self.tree, self.source, np.arange(self.tree.num_nodes)),)


class Forest:
    """Several trees as one: nodes end to end, parents as global indices.

    The arrays are small (tens to a few thousand nodes) and the work is a fixed handful of vector
    operations, so it runs in numpy, whose calls cost a microsecond where torch's cost several; the
    results are handed back as tensors sharing the memory.
    """

    def __init__(self, trees: Sequence[DraftTree]) -> None:
        self.sizes = np.array([t.num_nodes for t in trees], dtype=np.int64)
        self.offsets = np.cumsum(self.sizes) - self.sizes
        self.num_nodes = int(self.sizes.sum())
        self.segment = np.repeat(np.arange(len(trees)), self.sizes)  # [N]: which tree
        self._depths = _cat([t.depths.numpy() for t in trees], np.int64)
        self._probs = _cat([t.probs.numpy() for t in trees], np.float32)
        self._tokens = _cat([t.token_ids.numpy() for t in trees], np.int64)
        parents = _cat([t.parents.numpy() for t in trees], np.int64)
        self._parents = np.where(parents == ROOT, ROOT, parents + self.offsets[self.segment])
        self.max_depth = int(self._depths.max()) if self.num_nodes else 0

    @property
    def depths(self) -> torch.Tensor:
        return torch.from_numpy(self._depths)

    def path_probs(self) -> torch.Tensor:
        """[N] product of drafter probabilities from each tree's root down to each node (float32, computed
        in float64 as `DraftTree.path_probs`)."""
        return torch.from_numpy(self._along_paths(self._probs.astype(np.float64), np.multiply).astype(np.float32))

    def cap_by_ancestors(self, values: torch.Tensor) -> torch.Tensor:
        """Each node's value capped by its ancestors' (`monotone_estimates` for every tree at once)."""
        return torch.from_numpy(self._along_paths(values.numpy().copy(), np.minimum))

    def _along_paths(self, values: np.ndarray, combine: np.ufunc) -> np.ndarray:
        """Fold `combine` over each node's path from its tree's root, by pointer jumping: after step k a
        node holds the fold over itself and its 2^k - 1 nearest ancestors (log2(depth) steps)."""
        jump = self._parents.copy()
        reach = 1
        while reach < self.max_depth:
            inner = jump >= 0
            values[inner] = combine(values[inner], values[jump[inner]])
            jump[inner] = jump[jump[inner]]
            reach *= 2
        return values

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(values, self.sizes.tolist()))

    def on_paths(self, token_rows: Sequence[Sequence[int]]) -> np.ndarray:
        """[N] bool: whether each node lies on the path its tree spells with token_rows[tree] (the nodes
        `DraftTree.follow` returns, for every tree at once; among equal siblings the first one)."""
        lengths = np.array([len(t) for t in token_rows], dtype=np.int64)
        table = np.full((len(token_rows), max(int(lengths.max(initial=0)), 1)), -1, dtype=np.int64)
        for i, tokens in enumerate(token_rows):
            table[i, : len(tokens)] = tokens
        depth = self._depths
        reachable = depth <= lengths[self.segment]
        match = reachable & (self._tokens == table[self.segment, np.clip(depth - 1, 0, table.shape[1] - 1)])
        candidates = np.flatnonzero(match)
        if candidates.size:  # equal siblings (a malformed tree): `follow` takes the lowest index
            parents = self._parents[candidates]  # a tree's root: a parent of its own, past every node
            parents = np.where(parents == ROOT, self.num_nodes + self.segment[candidates], parents)
            keys = parents * (int(self._tokens.max()) + 1) + self._tokens[candidates]
            _, first = np.unique(keys, return_index=True)
            match[:] = False
            match[candidates[first]] = True
        return self._along_paths(match.astype(np.float64), np.minimum) > 0


@dataclass(frozen=True)
class Ranking:
    """Every offer's nodes best first and what each width would commit."""

    order: np.ndarray  # [N] global node indices, offer by offer, best first inside each offer
    offsets: np.ndarray  # [C] where each offer's nodes start (in `order` and in the forest)
    limits: np.ndarray  # [C] how many of them may be verified
    expected: torch.Tensor  # [C, max_width] float64: 1 + the sum of the W - 1 best estimates (flat after)

    def best(self, offer: int) -> torch.Tensor:
        """Offer `offer`'s verifiable nodes, best first, as indices into its own tree."""
        start, limit = int(self.offsets[offer]), int(self.limits[offer])
        return torch.from_numpy(self.order[start: start + limit] - start)


def rank_offers(forest: Forest, estimates: torch.Tensor, limits: Sequence[int], max_width: int) -> Ranking:
    """Best-first order per offer (highest estimate first, ties to the lower index, as `best_first_order`)
    and `expected_by_width` per offer, for all offers in one sort and one cumulative sum."""
    values = estimates.numpy().astype(np.float64)
    limit_a = np.minimum(np.asarray(limits, dtype=np.int64), forest.sizes)
    local = np.arange(forest.num_nodes) - forest.offsets[forest.segment]
    order = np.lexsort((local, -values, forest.segment))  # by offer, then estimate (descending), then index
    segment = forest.segment[order]
    rank = np.arange(forest.num_nodes) - forest.offsets[segment]
    keep = (rank < limit_a[segment]) & (rank < max_width - 1)
    table = np.zeros((len(limits), max(max_width - 1, 0)), dtype=np.float64)
    table[segment[keep], rank[keep]] = values[order[keep]]
    expected = np.concatenate([np.ones((len(limits), 1)), 1 + np.cumsum(table, axis=1)], axis=1)
    return Ranking(order, forest.offsets, limit_a, torch.from_numpy(expected))


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)


def merge_trees(trees: Sequence[DraftTree]) -> tuple[DraftTree, list[np.ndarray]]:
    """The union of trees under one root (SpecInfer's token-tree merge): one node per distinct token path,
    so one verification checks every source's guesses at once and shares what they agree on.

    Returns the merged tree (topological order kept: a node's parent exists before it; `probs` the highest
    of the sources', for display only: estimates come from each source's own tree) and, per input tree,
    the merged index of each of its nodes.
    """
    index: dict[tuple[int, int], int] = {}
    parents: list[int] = []
    tokens: list[int] = []
    probs: list[float] = []
    maps = []
    for tree in trees:
        mapped: list[int] = []
        for parent, token, prob in zip(tree.parents.tolist(), tree.token_ids.tolist(), tree.probs.tolist(),
                                       strict=True):
            key = (ROOT if parent == ROOT else mapped[parent], token)
            node = index.get(key)
            if node is None:
                node = index[key] = len(tokens)
                parents.append(key[0])
                tokens.append(token)
                probs.append(prob)
            elif prob > probs[node]:
                probs[node] = prob
            mapped.append(node)
        maps.append(np.asarray(mapped, dtype=np.int64))
    return DraftTree.from_lists(tokens, parents, probs), maps


def merged_estimates(num_nodes: int, maps: Sequence[np.ndarray], estimates: Sequence[torch.Tensor]) -> torch.Tensor:
    """A merged node's estimate: the highest of its sources' (each source's estimates are monotone along
    its paths and a source holding a node holds its ancestors, so the maximum is monotone too)."""
    out = np.zeros(num_nodes, dtype=np.float64)
    for mapped, values in zip(maps, estimates, strict=True):
        np.maximum.at(out, mapped, values.numpy().astype(np.float64))
    return torch.from_numpy(out)


def merge_offers(by_row: Sequence[Sequence[Offer]], estimates: Sequence[torch.Tensor],
                 max_nodes: Sequence[int]) -> tuple[list[Offer], list[torch.Tensor]]:
    """One offer per request: the union of its sources' trees (a single source stays as it is), with each
    merged node's best estimate. `estimates` are per offer of `by_row`, flattened; `max_nodes` per row."""
    offers: list[Offer] = []
    out: list[torch.Tensor] = []
    start = 0
    for row_offers, most in zip(by_row, max_nodes, strict=True):
        mine, start = estimates[start: start + len(row_offers)], start + len(row_offers)
        if len(row_offers) == 1:
            offers.append(row_offers[0])
            out.append(mine[0])
        elif row_offers:
            tree, maps = merge_trees([o.tree for o in row_offers])
            parts = tuple((o.tree, o.source, where) for o, where in zip(row_offers, maps, strict=True))
            offers.append(Offer(row_offers[0].row, tree, "+".join(o.source for o in row_offers),
                                min(most, tree.num_nodes), parts))
            out.append(merged_estimates(tree.num_nodes, maps, mine))
    return offers, out


def best_by_row(rows: Sequence[int], expected: torch.Tensor, num_rows: int) -> torch.Tensor:
    """[num_rows, max_width]: per request, the best of its offers at each width (1 where it has none)."""
    out = torch.ones(num_rows, expected.shape[1], dtype=torch.float64)
    if len(rows):
        index = torch.tensor(list(rows), dtype=torch.long)[:, None].expand_as(expected)
        out.scatter_reduce_(0, index, expected, reduce="amax")
    return out


def pick_offers(rows: Sequence[int], expected: torch.Tensor, width: int, num_rows: int) -> list[int | None]:
    """Per request, the offer whose `width` commits most (ties to the first offered), None if it has none."""
    values = expected[:, min(width, expected.shape[1]) - 1].tolist() if len(rows) else []
    best: list[int | None] = [None] * num_rows
    for index, (row, value) in enumerate(zip(rows, values, strict=True)):
        current = best[row]
        if current is None or value > values[current]:
            best[row] = index
    return best

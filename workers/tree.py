"""The draft tree: tokens hanging below a root, with drafter probabilities.

Nodes are kept in topological order (a parent's index is always below its children's), so every
operation here is a handful of tensor ops, never a walk over nodes in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

ROOT = -1  # parent index of a depth-1 node


@dataclass(frozen=True)
class DraftTree:
    """Immutable draft tree below a root token.

    token_ids: [N] long, parents: [N] long (ROOT for depth 1), probs: [N] float = drafter q(token | path),
    depths: [N] long (1 = child of the root).
    """

    token_ids: torch.Tensor
    parents: torch.Tensor
    probs: torch.Tensor
    depths: torch.Tensor
    # derived data, computed once per tree (or handed down by the operation that made it)
    _ancestors: torch.Tensor | None = field(default=None, compare=False, repr=False)
    _path_probs: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def empty() -> DraftTree:
        long = torch.zeros(0, dtype=torch.long)
        return DraftTree(long, long.clone(), torch.zeros(0), long.clone())

    @staticmethod
    def from_lists(token_ids: Sequence[int], parents: Sequence[int], probs: Sequence[float]) -> DraftTree:
        if not len(token_ids):
            return DraftTree.empty()
        if len(token_ids) != len(parents) or len(token_ids) != len(probs):
            raise ValueError("token_ids, parents and probs must have the same length")
        return DraftTree.from_tensors(torch.tensor(token_ids, dtype=torch.long),
                                      torch.tensor(parents, dtype=torch.long), torch.tensor(probs, dtype=torch.float32))

    @staticmethod
    def from_tensors(token_ids: torch.Tensor, parents: torch.Tensor, probs: torch.Tensor) -> DraftTree:
        """A tree of 1-D tensors as they are (a draft from the wire); ValueError unless parents come first."""
        parent_list = parents.tolist()
        depths: list[int] = []
        for index, parent in enumerate(parent_list):  # parents come first: one pass
            if not ROOT <= parent < index:
                raise ValueError(f"parent index {parent} of node {index} must be {ROOT} or refer to an earlier node")
            depths.append(1 if parent == ROOT else depths[parent] + 1)
        return DraftTree(token_ids.to(torch.long), parents.to(torch.long), probs.to(torch.float32),
                         torch.tensor(depths, dtype=torch.long))

    @property
    def num_nodes(self) -> int:
        return int(self.token_ids.numel())

    @property
    def max_depth(self) -> int:
        return int(self.depths.max()) if self.num_nodes else 0

    def add(self, parents: torch.Tensor, token_ids: torch.Tensor, probs: torch.Tensor) -> DraftTree:
        """Append nodes. A parent is ROOT, an existing node, or a node earlier in this same batch."""
        parents = parents.to(torch.long).reshape(-1)
        parent_list = parents.tolist()
        depth_list = self.depths.tolist()
        for index, parent in enumerate(parent_list, start=self.num_nodes):  # parents come first: one pass
            if not ROOT <= parent < index:
                raise ValueError(f"parent indices {parent_list} must be {ROOT} or refer to earlier nodes")
            depth_list.append(1 if parent == ROOT else depth_list[parent] + 1)
        return DraftTree(
            torch.cat([self.token_ids, token_ids.to(torch.long).reshape(-1)]),
            torch.cat([self.parents, parents]),
            torch.cat([self.probs, probs.to(torch.float32).reshape(-1)]),
            torch.tensor(depth_list, dtype=torch.long),
            **self._grown(parent_list),
        )

    def _grown(self, parent_list: list[int]) -> dict[str, torch.Tensor | None]:
        """The ancestor matrix extended to appended nodes (`add`): a new node's row is its parent's plus
        itself. (Path probabilities are recomputed when asked: a product along the path, to the bit.)"""
        if self._ancestors is None:
            return {}
        old, new = self.num_nodes, len(parent_list)
        matrix = np.zeros((old + new, old + new), dtype=np.bool_)
        matrix[:old, :old] = self._ancestors.numpy()
        for index, parent in enumerate(parent_list, start=old):
            if parent != ROOT:
                matrix[index] = matrix[parent]
            matrix[index, index] = True
        return {"_ancestors": torch.from_numpy(matrix)}

    def ancestors(self) -> torch.Tensor:
        """[N, N] bool: entry (i, j) is True when node j is node i or one of its ancestors (cached)."""
        if self._ancestors is None:
            object.__setattr__(self, "_ancestors", self._build_ancestors())
        assert self._ancestors is not None
        return self._ancestors

    def _build_ancestors(self) -> torch.Tensor:
        n = self.num_nodes
        matrix = np.zeros((n, n), dtype=np.bool_)
        for node, parent in enumerate(self.parents.tolist()):  # a parent's row is complete before its children's
            if parent != ROOT:
                matrix[node] = matrix[parent]
            matrix[node, node] = True
        return torch.from_numpy(matrix)

    def path_probs(self) -> torch.Tensor:
        """[N] product of drafter probabilities from the root down to each node (cached)."""
        if self._path_probs is None:
            values: list[float] = []
            for parent, prob in zip(self.parents.tolist(), self.probs.tolist(), strict=True):
                values.append(prob if parent == ROOT else values[parent] * prob)
            object.__setattr__(self, "_path_probs", torch.tensor(values, dtype=torch.float32))
        assert self._path_probs is not None
        return self._path_probs

    def cache_path_probs(self, values: torch.Tensor) -> None:
        """Hand in `path_probs` computed elsewhere (a batch computes every tree's at once)."""
        if self._path_probs is None:
            object.__setattr__(self, "_path_probs", values)

    def _derived(self, index: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Cached data of the nodes `index` (an ancestor-closed set), for the tree made of them."""
        return {"_ancestors": None if self._ancestors is None else self._ancestors[index][:, index],
                "_path_probs": None if self._path_probs is None else self._path_probs[index]}

    def select(self, keep: torch.Tensor) -> DraftTree:
        """Sub-tree made of the ancestor-closed node set `keep` (any order); indices are renumbered."""
        keep = torch.sort(keep.to(torch.long)).values
        new_index = torch.full((self.num_nodes,), ROOT, dtype=torch.long)
        new_index[keep] = torch.arange(keep.numel())
        old_parents = self.parents[keep]
        parents = torch.where(old_parents == ROOT, ROOT, new_index[old_parents.clamp(min=0)])
        if bool(((old_parents != ROOT) & (parents == ROOT)).any()):
            raise ValueError("selection is not ancestor-closed")
        return DraftTree(self.token_ids[keep], parents, self.probs[keep], self.depths[keep], **self._derived(keep))

    def reorder(self, order: torch.Tensor) -> DraftTree:
        """The tree of the nodes in `order` (all of them, or an ancestor-closed first part of such an
        order), in that order, which must put every parent before its children.

        The verifier sorts nodes by acceptance estimate so that any prefix is a tree (`prefix`).
        """
        order = order.to(torch.long)
        index = order.numpy()
        new_index = np.full(self.num_nodes, self.num_nodes, dtype=np.int64)  # left out: fails below
        new_index[index] = np.arange(index.size)
        old_parents = self.parents.numpy()[index]
        parents = np.where(old_parents == ROOT, ROOT, new_index[np.maximum(old_parents, 0)])
        if bool((parents >= np.arange(index.size)).any()):
            raise ValueError("order puts a child before its parent")
        return DraftTree(self.token_ids[order], torch.from_numpy(parents), self.probs[order], self.depths[order],
                         **self._derived(order))

    def prefix(self, num_nodes: int) -> DraftTree:
        """The first `num_nodes` nodes (a tree, since parents come first); derived data is sliced, not rebuilt."""
        if num_nodes >= self.num_nodes:
            return self
        n = max(num_nodes, 0)
        return DraftTree(self.token_ids[:n], self.parents[:n], self.probs[:n], self.depths[:n],
                         None if self._ancestors is None else self._ancestors[:n, :n],
                         None if self._path_probs is None else self._path_probs[:n])

    def best_nodes(self, total_tokens: int, max_depth: int | None = None) -> torch.Tensor:
        """Indices of the `total_tokens` nodes of highest path probability (ancestor-closed, sorted).

        A child's path probability never exceeds its parent's, and ties go to the lower index, so the
        top of this order always contains a node's ancestors.
        """
        candidates = torch.arange(self.num_nodes)
        if max_depth is not None:
            candidates = candidates[self.depths <= max_depth]
        if candidates.numel() <= total_tokens:
            return candidates
        scores = self.path_probs()[candidates].double() - candidates.double() * 1e-12
        top = torch.topk(scores, total_tokens).indices
        return torch.sort(candidates[top]).values

    def snapshot(self, total_tokens: int, max_depth: int | None = None) -> DraftTree:
        """Ancestor-closed part of at most `total_tokens` nodes, chosen by path probability."""
        return self.select(self.best_nodes(total_tokens, max_depth))

    def subtree(self, node: int) -> DraftTree:
        """The nodes below `node`, re-rooted so that `node` becomes the root.

        Needs no ancestor matrix: a tree fresh from the wire is re-rooted in one pass over its parents (a
        drafter's living tree has hundreds of nodes; its N x N matrix would cost more than the verification's
        Python). Cached derived data is sliced, not rebuilt.
        """
        keep = self.descendants(node)  # ascending: topological order is kept
        new_index = np.full(self.num_nodes, ROOT, dtype=np.int64)
        new_index[keep.numpy()] = np.arange(keep.numel())
        parents = torch.from_numpy(new_index[self.parents.numpy()[keep.numpy()]])  # children of `node` map to ROOT
        path_probs = None
        if self._path_probs is not None:  # below `node`, path probabilities are relative to it
            path_probs = self._path_probs[keep] / self._path_probs[node].clamp(min=1e-30)
        ancestors = None if self._ancestors is None else self._ancestors[keep][:, keep]
        return DraftTree(self.token_ids[keep], parents, self.probs[keep], self.depths[keep] - self.depths[node],
                         ancestors, path_probs)

    def descendants(self, node: int) -> torch.Tensor:
        """[M] sorted indices of the nodes strictly below `node`."""
        if self._ancestors is not None:
            below = self._ancestors[:, node].clone()
            below[node] = False
            return torch.nonzero(below).flatten()
        inside = [False] * self.num_nodes
        inside[node] = True
        found = []
        for index, parent in enumerate(self.parents.tolist()[node + 1:], start=node + 1):  # parents come first
            if parent >= 0 and inside[parent]:
                inside[index] = True
                found.append(index)
        return torch.tensor(found, dtype=torch.long)

    def reroot(self, token_ids: Sequence[int]) -> DraftTree | None:
        """The tree below the node reached by following `token_ids` from the root (None when the tree
        does not spell them all). A tree built on an older committed prefix becomes one for the
        current prefix this way: follow the tokens committed since it was built."""
        if not token_ids:
            return self
        path = self.follow(token_ids)
        return self.subtree(path[-1]) if len(path) == len(token_ids) else None

    def follow(self, token_ids: Sequence[int]) -> list[int]:
        """Node indices along the path spelled by `token_ids`, as far as the tree goes."""
        path: list[int] = []
        parent = ROOT
        parents, tokens = self.parents.numpy(), self.token_ids.numpy()
        for token in token_ids:  # one step per committed token, bounded by the tree depth
            match = np.flatnonzero((parents == parent) & (tokens == token))
            if match.size == 0:
                break
            parent = int(match[0])
            path.append(parent)
        return path

    def children(self, node: int) -> torch.Tensor:
        return torch.nonzero(self.parents == node).flatten()

"""The one interface every drafter implements.

A `Drafter` holds the model (if any) and opens a `DraftSession` per request. A session keeps the
committed tokens and a *living tree* below the root: `grow()` adds nodes (one drafter step),
`snapshot()` hands out an ancestor-closed part for verification, and `commit()` applies a
verification result by re-rooting the tree when the bonus token is one of its nodes, or by rolling
back to the committed prefix when it is not.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from workers.tree import DraftTree
from workers.tree_policy import TreeConfig


class DraftSession(ABC):
    """Drafting state of one request. Subclasses own their caches; this class owns the tree."""

    tokens_per_step: int = 1  # tree levels one `grow()` can add (k for a semi-autoregressive drafter)

    def __init__(self, committed_ids: Sequence[int], config: TreeConfig) -> None:
        if not committed_ids:
            raise ValueError("a draft session needs at least one committed token (the root)")
        self.committed_ids = list(committed_ids)
        self.config = config
        self.tree = DraftTree.empty()
        self.num_reroot_hits = 0
        self.num_commits = 0
        self.num_draft_steps = 0  # growth steps taken by `draft()` (sync mode)

    @property
    def root_token(self) -> int:
        return self.committed_ids[-1]

    @abstractmethod
    def grow(self, max_expansions: int | None = None) -> bool:
        """Run one drafter step on the living tree, expanding at most `max_expansions` leaves (None: the
        tree config's `top_k`); False when it cannot grow any further."""

    def expansion_values(self) -> torch.Tensor:
        """Path probabilities of the leaves the next `grow()` would expand, best first (the root counts 1):
        what each expansion is worth. Drafters that do not expand leaves report one step worth 1."""
        return torch.ones(1)

    def make_room(self) -> bool:
        """Async, at the living cap: drop leaves so the next `grow()` can go on (True when any were).
        Drafters that expand leaves prune (workers/tree_policy.py `leaves_to_prune`); others never do."""
        return False

    def draft(self) -> DraftTree:
        """Sync mode: grow enough steps to reach the depth budget, then take a snapshot."""
        return draft_many([self], lambda sessions, limits: [s.grow(e) for s, e in
                                                            zip(sessions, limits, strict=True)])[0]

    def snapshot(self, total_tokens: int | None = None) -> DraftTree:
        return self.tree.snapshot(total_tokens or self.config.total_tokens, self.config.depth)

    def commit(self, new_token_ids: Sequence[int], features: torch.Tensor | None = None) -> bool:
        """Apply a verification: accepted tokens then the bonus token. Returns True on a re-root hit.

        `features` ([len(new_token_ids), H]) are the target's features at the old root and the
        accepted nodes, i.e. at every position that has just become part of the committed cache.
        """
        if not new_token_ids:
            raise ValueError("a commit carries at least the bonus token")
        self._check_commit_features(len(new_token_ids), features)  # before any state changes
        path = self.tree.follow(new_token_ids)
        is_hit = len(path) == len(new_token_ids)
        old_len = len(self.committed_ids)
        self.committed_ids.extend(int(t) for t in new_token_ids)
        self.num_commits += 1
        if is_hit:
            self.num_reroot_hits += 1
            self._on_reroot(path, old_len, features)
            self.tree = self.tree.subtree(path[-1])
        else:
            self._on_rollback(old_len, features)
            self.tree = DraftTree.empty()
        return is_hit

    def reset(self, committed_ids: Sequence[int], features: torch.Tensor | None = None) -> None:
        """Rebuild from a committed prefix alone (the coordinator's authoritative copy)."""
        self.committed_ids = list(committed_ids)
        self.tree = DraftTree.empty()
        self._on_reset(features)

    def _check_commit_features(self, num_new: int, features: torch.Tensor | None) -> None:  # noqa: B027
        """Raise ValueError when a commit's features are unusable (default: features are not read)."""

    def _on_reroot(self, path: list[int], old_len: int, features: torch.Tensor | None) -> None:
        """Caches follow a re-root at `path[-1]`; by default this is a rollback."""
        self._on_rollback(old_len, features)

    @abstractmethod
    def _on_rollback(self, old_len: int, features: torch.Tensor | None) -> None:
        """Caches drop the tree and absorb the newly committed tokens (and features)."""

    @abstractmethod
    def _on_reset(self, features: torch.Tensor | None) -> None:
        """Caches are rebuilt from `self.committed_ids` (and features of all but the root)."""

    def release(self) -> None:
        """Free per-request memory."""
        self.tree = DraftTree.empty()


GrowMany = Callable[[Sequence[DraftSession], Sequence[int | None]], list[bool]]


def draft_many(sessions: Sequence[DraftSession], grow_many: GrowMany) -> list[DraftTree]:
    """Sync mode for several sessions at once: each grows to its depth budget, all of them in the same
    steps, then takes a snapshot. Growth stays within the snapshot depth: deeper nodes could not be sent."""
    living = [session.config for session in sessions]
    for session in sessions:
        session.config = dataclasses.replace(session.config, max_living_depth=session.config.depth)
    try:
        due = {id(s): math.ceil(s.config.depth / s.tokens_per_step) for s in sessions}
        growing = [s for s in sessions if due[id(s)] > 0]
        while growing:
            grown = grow_many(growing, [None] * len(growing))
            for session, ok in zip(growing, grown, strict=True):
                session.num_draft_steps += int(ok)
                due[id(session)] = due[id(session)] - 1 if ok else 0
            growing = [s for s in growing if due[id(s)] > 0]
    finally:
        for session, config in zip(sessions, living, strict=True):
            session.config = config
    return [session.snapshot() for session in sessions]


class Drafter(ABC):
    """Holds a drafter's model (if any) and opens sessions."""

    needs_features: bool = False  # whether sessions read the target's last-layer features

    @abstractmethod
    def open(self, committed_ids: Sequence[int], config: TreeConfig,
             features: torch.Tensor | None = None) -> DraftSession:
        """Start drafting for a request whose committed prefix is `committed_ids`.

        `features` ([len(committed_ids) - 1, H]) are the target's features at every committed
        position but the root; drafters that do not read features ignore them.
        """

    def grow_many(self, sessions: Sequence[DraftSession], expansions: Sequence[int | None]) -> list[bool]:
        """One step for each session (expanding at most its `expansions` leaves); a drafter with a model
        runs them in one forward (workers/drafters/batched.py). Returns each session's `grow()` result."""
        return [session.grow(limit) for session, limit in zip(sessions, expansions, strict=True)]

    def check_target(self, vocab_size: int, hidden_size: int) -> None:  # noqa: B027 - optional hook
        """Raise ModelMismatchError when this drafter cannot serve the given target (default: any fits)."""

"""Drafting many requests in one forward: every session plans its step, the drafter runs them at once.

A model drafter's sessions share one slot KV cache (workers/slot_cache.py): a session owns a slot for
its life and keeps there what its own cache held before (committed entries, then tree entries in the
order it fed them). `grow_many(sessions)` is one drafter step for all of them:

    plans = [session.plan(expansions) ...]   # which leaves to expand, what to feed: a `Row` on its slot
    hidden = one padded forward of every row # rows far wider than the rest (a new prompt) run alone
    session.apply(plan, hidden_of_its_row)   # children added, lengths set, placeholders dropped

so B requests cost one forward instead of B. `grow()` of one session is `grow_many` of one: the same
code path serves one request and many. The cache sizes itself by the load (slots and length double
when needed; a drafter's memory follows what it serves, the verifier's is fixed at start-up).
"""

from __future__ import annotations

import contextlib
import math
import sys
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workers.batch_mask import Row, batch_inputs
from workers.drafters.base import Drafter, DraftSession
from workers.slot_cache import SlotCache
from workers.tree_policy import TreeConfig, leaves_to_prune

INITIAL_SLOTS, INITIAL_LENGTH = 4, 512
WIDE_ROW = 32  # a row wider than this and than twice the batch's median width runs in a forward of its own


@dataclass
class StepPlan:
    """One session's part of a batched drafter step."""

    row: Row | None  # what the step feeds into the session's slot (None: no forward needed)
    embeds: torch.Tensor | None = None  # [n, H] input embeddings to use instead of `row.token_ids`
    state: Any = None  # the session's own bookkeeping between `plan` and `apply`
    pair_inputs: tuple[torch.Tensor, torch.Tensor] | None = None  # what a drafter fuses into `embeds` itself


class BatchedSession(DraftSession):
    """A session whose steps can share a forward with other sessions of the same drafter."""

    def __init__(self, owner: BatchedDrafter, committed_ids: Sequence[int], config: TreeConfig) -> None:
        super().__init__(committed_ids, config)
        self.owner = owner
        self.slot = owner.allocate_slot()

    @property
    def cache_length(self) -> int:
        return self.owner.slot_cache.lengths[self._own_slot()]

    def set_length(self, length: int) -> None:
        """The slot's first `length` entries are valid: a rollback, or what a forward wrote is kept."""
        self.owner.slot_cache.set_length(self._own_slot(), length)

    def keep(self, positions: torch.Tensor) -> None:
        """Keep the entries at `positions` (distinct, any order), moved to 0, 1, ...: one gather."""
        self.owner.slot_cache.compact([self._own_slot()], [0], [positions.tolist()])

    def _own_slot(self) -> int:
        if self.slot < 0:  # released, then reset: take a slot again
            self.slot = self.owner.allocate_slot()
        return self.slot

    def make_room(self) -> bool:
        drop = leaves_to_prune(self.tree, self.config, self.tokens_per_step * self.config.top_k)
        if not drop.numel():
            return False
        keep = torch.ones(self.tree.num_nodes, dtype=torch.bool)
        keep[drop] = False
        kept = torch.nonzero(keep).flatten()
        self._on_prune(kept)
        self.tree = self.tree.select(kept)
        return True

    @abstractmethod
    def _on_prune(self, kept: torch.Tensor) -> None:
        """Per-node state follows a prune to the nodes `kept` (ascending). Only leaves without a cached entry
        are ever dropped, so the slot's entries stay as they are."""

    @abstractmethod
    def plan(self, max_expansions: int | None) -> StepPlan | None:
        """The next step's leaves and inputs; None when the tree cannot grow any further."""

    @abstractmethod
    def apply(self, plan: StepPlan, hidden: torch.Tensor | None) -> None:
        """Finish the planned step with its row's last-layer states ([n, H]; None when it fed nothing)."""

    def grow(self, max_expansions: int | None = None) -> bool:
        return self.owner.grow_many([self], [max_expansions])[0]

    def release(self) -> None:
        super().release()
        if self.slot >= 0:
            self.owner.release_slot(self.slot)
            self.slot = -1

    def __del__(self) -> None:  # a session dropped without release() gives its slot back
        if sys.is_finalizing():  # the process is ending: nothing to give back, and new tensors now abort torch
            return
        with contextlib.suppress(Exception):
            self.release()


class BatchedDrafter(Drafter):
    """A drafter with a model: its sessions' steps run together on its slot cache."""

    _slot_cache: SlotCache | None = None

    @abstractmethod
    def _new_cache(self, num_slots: int, max_len: int) -> SlotCache:
        """An empty slot cache shaped for the model."""

    @abstractmethod
    def _forward(self, ids: torch.Tensor, embeds: torch.Tensor | None, positions: torch.Tensor,
                 mask: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        """One forward of padded rows ([B, W] ids or [B, W, H] embeds) -> last-layer states [B, W, H]."""

    @property
    def slot_cache(self) -> SlotCache:
        if self._slot_cache is None:
            self._slot_cache = self._new_cache(INITIAL_SLOTS, INITIAL_LENGTH)
        return self._slot_cache

    def allocate_slot(self) -> int:
        cache = self.slot_cache
        if not cache.num_free:
            cache.resize(2 * cache.num_slots, cache.max_len)
        return cache.allocate()

    def release_slot(self, slot: int) -> None:
        self.slot_cache.release(slot)

    @torch.no_grad()
    def grow_many(self, sessions: Sequence[DraftSession], expansions: Sequence[int | None]) -> list[bool]:
        plans = []
        for session, limit in zip(sessions, expansions, strict=True):
            assert isinstance(session, BatchedSession) and session.owner is self
            plans.append(session.plan(limit))
        runs = [i for i, plan in enumerate(plans) if plan is not None and plan.row is not None]
        hidden: dict[int, torch.Tensor] = {}
        for group in _groups(runs, [plans[i].row.width for i in runs]):  # type: ignore[union-attr]
            # in slot order: a run of slots is attended as a view of the cache, not a gather
            group = sorted(group, key=lambda i: sessions[i]._own_slot())  # type: ignore[attr-defined]
            outputs = self._run([sessions[i] for i in group], [plans[i] for i in group])  # type: ignore[misc]
            hidden.update(zip(group, outputs, strict=True))
        self._apply_all(sessions, plans, hidden)
        return [plan is not None for plan in plans]

    def _apply_all(self, sessions: Sequence[DraftSession], plans: Sequence[StepPlan | None],
                   hidden: dict[int, torch.Tensor]) -> None:
        """Every planned session finishes its step with its row's states (a drafter may batch this too)."""
        for i, (session, plan) in enumerate(zip(sessions, plans, strict=True)):
            if plan is not None:
                assert isinstance(session, BatchedSession)
                session.apply(plan, hidden.get(i))

    def _run(self, sessions: Sequence[DraftSession], plans: Sequence[StepPlan]) -> list[torch.Tensor]:
        """One forward of the plans' rows on their sessions' slots; lengths are the sessions' to set."""
        rows = [plan.row for plan in plans]
        assert all(row is not None for row in rows)
        slots = [session._own_slot() for session in sessions]  # type: ignore[attr-defined]
        cache = self.slot_cache
        starts = [cache.lengths[slot] for slot in slots]
        width = max(row.width for row in rows)  # type: ignore[union-attr]
        if max(starts) + width > cache.max_len:
            cache.resize(cache.num_slots, 2 ** math.ceil(math.log2(max(starts) + width)))
        kv_len = cache.begin(slots, starts, width)
        try:
            ids, positions, mask = batch_inputs(rows, starts, kv_len, self.dtype)  # type: ignore[arg-type]
            hidden = self._forward(ids, self._embeds(plans, width), positions, mask, cache)
        finally:
            cache.end()
        return [hidden[b, : row.width] for b, row in enumerate(rows)]  # type: ignore[union-attr]

    def _embeds(self, plans: Sequence[StepPlan], width: int) -> torch.Tensor | None:
        """[B, width, H] input embeddings of the padded rows (zeros after each row's own), or None: token ids."""
        if plans[0].embeds is None:
            return None
        first = plans[0].embeds
        embeds = first.new_zeros(len(plans), width, first.shape[-1])
        for b, plan in enumerate(plans):
            assert plan.embeds is not None
            embeds[b, : plan.embeds.shape[0]] = plan.embeds
        return embeds

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The model's floating dtype (for the additive mask)."""


def _groups(indices: list[int], widths: list[int]) -> list[list[int]]:
    """Forwards to run: rows much wider than the rest (a new prompt's prefill) go alone, so the others
    do not pay for its padding."""
    if not indices:
        return []
    median = sorted(widths)[len(widths) // 2]
    wide = [i for i, w in zip(indices, widths, strict=True) if w > WIDE_ROW and w > 2 * median]
    rest = [i for i in indices if i not in wide]
    return [[i] for i in wide] + ([rest] if rest else [])

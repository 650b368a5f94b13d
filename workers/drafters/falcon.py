"""Falcon drafter (DESIGN.md §7): a semi-autoregressive session that grows k tree levels per forward
from the target's features, with lazy prefill. Each session's KV lives in a slot of the drafter's slot
cache (committed pairs, then tree pairs); every request's step runs in one forward (drafters/batched.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from protocol.errors import ModelMismatchError
from workers.batch_mask import Row
from workers.drafters.base import DraftSession
from workers.drafters.batched import BatchedDrafter, BatchedSession, StepPlan
from workers.drafters.falcon_model import FalconDrafterModel
from workers.drafters.falcon_tree import (
    COMMITTED,
    PLACEHOLDER,
    TREE_PAIR,
    Entries,
    block_tops,
    expand_blocks,
    visibility,
)
from workers.slot_cache import SlotCache
from workers.tree import ROOT, DraftTree
from workers.tree_policy import TreeConfig, expansion_values, pick_expansions


class FalconDrafter(BatchedDrafter):
    """Holds one Falcon drafter model on its device; its sessions share one slot cache and one forward."""

    needs_features = True

    def __init__(self, model: FalconDrafterModel, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        self.model = model.place(device, dtype)

    @classmethod
    def from_pretrained(cls, drafter_dir: str | Path, target_dir: str | Path,
                        device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> FalconDrafter:
        model = FalconDrafterModel.load(drafter_dir, target_dir=target_dir, dtype=dtype, device=device)
        return cls(model, device, dtype)

    def open(self, committed_ids: Sequence[int], config: TreeConfig,
             features: torch.Tensor | None = None) -> FalconSession:
        return FalconSession(self, committed_ids, config, features)

    def check_target(self, vocab_size: int, hidden_size: int) -> None:
        ours = self.model.config
        if (ours.vocab_size, ours.hidden_size) != (vocab_size, hidden_size):
            raise ModelMismatchError(
                f"falcon drafter has vocab_size={ours.vocab_size}, hidden_size={ours.hidden_size}; "
                f"target has vocab_size={vocab_size}, hidden_size={hidden_size}")

    @property
    def dtype(self) -> torch.dtype:
        return self.model.placeholder.dtype

    def _embeds(self, plans: Sequence[StepPlan], width: int) -> torch.Tensor:
        """[B, width, H]: each row's fused pairs (one `fuse` for every row), then its placeholders."""
        features, next_ids, widths = [], [], []
        for plan in plans:
            assert plan.pair_inputs is not None and plan.row is not None
            features.append(plan.pair_inputs[0])
            next_ids.append(plan.pair_inputs[1])
            widths.append(plan.row.width)
        fused = self.model.fuse(torch.cat(features)[None], torch.cat(next_ids)[None])[0]  # [sum pairs, H]
        embeds = fused.new_zeros(len(plans), width, fused.shape[-1])
        placeholder = self.model.placeholders(1)[0, 0]
        start = 0
        for b, (pairs, row_width) in enumerate(zip(features, widths, strict=True)):
            num_pairs = pairs.shape[0]
            embeds[b, :num_pairs] = fused[start: start + num_pairs]
            embeds[b, num_pairs:row_width] = placeholder
            start += num_pairs
        return embeds

    def _apply_all(self, sessions: Sequence[DraftSession], plans: Sequence[StepPlan | None],
                   hidden: dict[int, torch.Tensor]) -> None:
        """Every session's blocks through the LM head, softmax and top-k at once, then each tree grows."""
        live: list[tuple[FalconSession, StepPlan, torch.Tensor]] = []
        for i, (session, plan) in enumerate(zip(sessions, plans, strict=True)):
            if plan is not None:
                assert isinstance(session, FalconSession)
                live.append((session, plan, session.absorb(plan, hidden.get(i))))  # [E, k, H] each
        if not live:
            return
        flat = torch.cat([out.reshape(-1, out.shape[-1]) for _, _, out in live])  # [sum E*k, H]
        probs, tokens = block_tops(self.model.probs(flat), max(session.config.top_k for session, _, _ in live))
        start = 0
        for session, plan, out in live:
            end = start + out.shape[0] * out.shape[1]
            shape = (out.shape[0], out.shape[1], -1)
            session.finish(plan, out, (probs[start:end].reshape(shape), tokens[start:end].reshape(shape)))
            start = end

    def _new_cache(self, num_slots: int, max_len: int) -> SlotCache:
        return SlotCache.for_model(self.model.llama_config, num_slots, max_len, self.dtype,
                                   self.model.placeholder.device)

    def _forward(self, ids: torch.Tensor, embeds: torch.Tensor | None, positions: torch.Tensor,
                 mask: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        if embeds is None:  # Falcon feeds fused pairs and placeholders, never bare token ids
            raise RuntimeError("a falcon step needs input embeddings")
        device = self.model.placeholder.device
        hidden: torch.Tensor = self.model(embeds, mask.to(device), positions.to(device), cache)  # [B, W, H]
        return hidden


@dataclass(frozen=True)
class _Step:
    """A planned step: what `apply` needs to read its row's outputs."""

    nodes: torch.Tensor  # [E] expanded nodes, ROOT = the root
    pairs: torch.Tensor  # [M] tree nodes whose pairs the step feeds (sorted)
    past: int  # slot length before the step
    num_pending: int  # committed pairs fed first


class FalconSession(BatchedSession):
    """One request. Slot entries [0, num_cached_committed) hold committed pairs t = entry (true features);
    later entries hold tree pairs (predicted features), recorded per node in `_slots` (-1 = not cached).
    Committed pairs not yet computed wait in `_pending` and go first into the next forward.
    """

    num_cached_committed: int
    _features: torch.Tensor  # [N, H] aligned with self.tree
    _slots: torch.Tensor  # [N] long
    _pending: torch.Tensor  # [P, H] true features of committed pairs not yet cached
    _root_output: torch.Tensor | None

    def __init__(self, drafter: FalconDrafter, committed_ids: Sequence[int], config: TreeConfig,
                 features: torch.Tensor | None) -> None:
        self.model = drafter.model
        pending = self._check_features(features, max(len(committed_ids) - 1, 0))  # before taking a slot
        super().__init__(drafter, committed_ids, config)
        self.tokens_per_step = self.model.config.block_size
        self._pick: tuple[DraftTree, torch.Tensor] | None = None
        self._start(pending)

    @property
    def node_features(self) -> torch.Tensor:
        """[N, H] per tree node: the predicted feature its pair fuses with its token (the output that
        predicted it)."""
        return self._features

    def expansion_values(self) -> torch.Tensor:
        return expansion_values(self.tree, self.config, self._picked())

    def _picked(self) -> torch.Tensor:
        """`pick_expansions` of the current tree, best first (asked for twice a step: computed once)."""
        if self._pick is None or self._pick[0] is not self.tree:
            self._pick = (self.tree, pick_expansions(self.tree, self.config))
        return self._pick[1]

    def plan(self, max_expansions: int | None) -> StepPlan | None:
        """Feed pending committed pairs, missing path pairs, then k-1 placeholders per expanded node."""
        if len(self.committed_ids) < 2:
            return None  # no committed pair yet, so nothing predicts the root's children
        nodes = self._picked()[: max_expansions or None]  # [E], ROOT = the root; a prefix of the same order
        if nodes.numel() == 0:
            return None
        ancestors = self.tree.ancestors()  # [N, N]
        pairs = self._pairs_to_feed(nodes, ancestors)  # [M]
        step = _Step(nodes, pairs, self.cache_length, self._pending.shape[0])
        queries = self._query_entries(pairs, nodes)
        num_queries = queries.kinds.numel()
        if not num_queries:  # k = 1 and only the root, whose output is known: nothing to feed
            return StepPlan(None, state=step)
        keys = Entries.cat([self._cache_entries(), queries])
        visible = visibility(queries, keys, ancestors)  # [Q, L+Q]
        row = Row.step(torch.zeros(num_queries, dtype=torch.long), queries.positions, visible, step.past)
        return StepPlan(row, state=step, pair_inputs=self._pair_inputs(pairs))

    def apply(self, plan: StepPlan, hidden: torch.Tensor | None) -> None:
        outputs = self.absorb(plan, hidden)
        self.finish(plan, outputs, block_tops(self.model.probs(outputs), self.config.top_k))

    def absorb(self, plan: StepPlan, hidden: torch.Tensor | None) -> torch.Tensor:
        """The first half of `apply`: keep the step's pair entries; [E, k, H] outputs of its blocks."""
        if hidden is None:
            hidden = self._features.new_zeros(0, self._features.shape[-1])
        return self._absorb(hidden, plan.state)

    def finish(self, plan: StepPlan, outputs: torch.Tensor, tops: tuple[torch.Tensor, torch.Tensor]) -> None:
        """The second half: the blocks' children from `block_tops` of their distributions ([E, k, K])."""
        step: _Step = plan.state
        self.tree, new_features = expand_blocks(self.tree, step.nodes, tops, outputs, self.config)
        self._features = torch.cat([self._features, new_features])
        self._slots = torch.cat([self._slots, torch.full((new_features.shape[0],), -1, dtype=torch.long)])

    def _pairs_to_feed(self, nodes: torch.Tensor, ancestors: torch.Tensor) -> torch.Tensor:
        """[M] tree nodes on the expanded nodes' root paths whose pairs are not cached (sorted)."""
        inner = nodes[nodes >= 0]
        if inner.numel() == 0:
            return torch.zeros(0, dtype=torch.long)
        # expanded nodes are leaves, and only expansions cache a pair, so their own outputs are always fresh
        if bool((self._slots[inner] >= 0).any()):
            raise RuntimeError("an expanded node's pair is already cached; its output was not kept")
        return torch.nonzero(ancestors[inner].any(dim=0) & (self._slots < 0)).flatten()

    def _query_entries(self, pairs: torch.Tensor, nodes: torch.Tensor) -> Entries:
        last_pair = len(self.committed_ids) - 2  # position of the root's pair
        committed = Entries.build(COMMITTED, torch.arange(self.num_cached_committed, last_pair + 1))
        tree_pairs = Entries.build(TREE_PAIR, last_pair + self.tree.depths[pairs], nodes=pairs)
        num_blocks, num_placeholders = nodes.numel(), self.tokens_per_step - 1
        depths = torch.zeros_like(nodes)
        depths[nodes >= 0] = self.tree.depths[nodes[nodes >= 0]]
        offsets = torch.arange(1, num_placeholders + 1)  # placeholder j sits at block pair position + j
        placeholders = Entries.build(
            PLACEHOLDER, (last_pair + depths[:, None] + offsets[None, :]).flatten(),
            nodes=nodes.repeat_interleave(num_placeholders),
            blocks=torch.arange(num_blocks).repeat_interleave(num_placeholders))
        return Entries.cat([committed, tree_pairs, placeholders])

    def _cache_entries(self) -> Entries:
        """Descriptors of the slot's valid entries: committed pairs, then tree pairs by entry."""
        num_committed = self.num_cached_committed
        num_tree = self.cache_length - num_committed
        cached = torch.nonzero(self._slots >= 0).flatten()
        slot_nodes = torch.full((num_tree,), ROOT, dtype=torch.long)
        slot_nodes[self._slots[cached] - num_committed] = cached
        positions = len(self.committed_ids) - 2 + self.tree.depths[slot_nodes]
        return Entries.cat([Entries.build(COMMITTED, torch.arange(num_committed)),
                            Entries.build(TREE_PAIR, positions, nodes=slot_nodes)])

    def _pair_inputs(self, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the step's pairs fuse, committed pairs first, then tree pairs: [P+M, H] features and
        [P+M] next-token ids (the drafter fuses every session's at once: FalconDrafter._embeds)."""
        device = self._features.device
        next_ids = torch.tensor(self.committed_ids[self.num_cached_committed + 1:], dtype=torch.long)  # [P]
        features = torch.cat([self._pending, self._features[pairs.to(device)]])
        return features, torch.cat([next_ids, self.tree.token_ids[pairs]]).to(device)

    def _absorb(self, hidden: torch.Tensor, step: _Step) -> torch.Tensor:
        """Keep the new pairs' KV, drop the placeholders'; return block outputs [E, k, H]."""
        num_pending, num_pairs = step.num_pending, step.pairs.numel()
        self.set_length(step.past + num_pending + num_pairs)  # placeholders were fed last
        self._slots[step.pairs] = step.past + num_pending + torch.arange(num_pairs)
        self.num_cached_committed += num_pending
        if num_pending:
            self._root_output = hidden[num_pending - 1].clone()  # output of the root's pair (t = C-2)
        self._pending = self._pending[num_pending:]
        pair_out = self._block_pair_outputs(hidden, num_pending, step.pairs, step.nodes)  # [E, H]
        num_blocks, num_placeholders = step.nodes.numel(), self.tokens_per_step - 1
        placeholder_out = hidden[num_pending + num_pairs:].reshape(num_blocks, num_placeholders,
                                                                   hidden.shape[-1])  # [E, k-1, H]
        return torch.cat([pair_out[:, None], placeholder_out], dim=1)

    def _block_pair_outputs(self, hidden: torch.Tensor, num_pending: int, pairs: torch.Tensor,
                            nodes: torch.Tensor) -> torch.Tensor:
        """[E, H] output of each block's pair: the root's pair for ROOT, else the node's new pair row."""
        is_root = nodes == ROOT
        out = hidden.new_empty(nodes.numel(), hidden.shape[-1])
        if bool(is_root.any()):
            if self._root_output is None:
                raise RuntimeError("the root's pair output is unknown")
            out[is_root.to(hidden.device)] = self._root_output
        rows = num_pending + torch.searchsorted(pairs, nodes[~is_root])  # `pairs` is sorted
        out[(~is_root).to(hidden.device)] = hidden[rows.to(hidden.device)]
        return out

    def _check_commit_features(self, num_new: int, features: torch.Tensor | None) -> None:
        self._check_features(features, num_new)

    def _on_prune(self, kept: torch.Tensor) -> None:
        if int((self._slots >= 0).sum()) != int((self._slots[kept] >= 0).sum()):
            raise RuntimeError("a pruned node had a cached pair")
        self._features = self._features[kept.to(self._features.device)]
        self._slots = self._slots[kept]

    def _on_reroot(self, path: list[int], old_len: int, features: torch.Tensor | None) -> None:
        new = self._check_features(features, len(self.committed_ids) - old_len)
        below = self.tree.ancestors()[:, path[-1]].clone()  # same rows DraftTree.subtree keeps, same order
        below[path[-1]] = False
        keep = torch.nonzero(below).flatten()
        self._features = self._features[keep.to(self._features.device)]
        self._slots = torch.full((keep.numel(),), -1, dtype=torch.long)
        self._absorb_commit(new)

    def _on_rollback(self, old_len: int, features: torch.Tensor | None) -> None:
        new = self._check_features(features, len(self.committed_ids) - old_len)
        self._features, self._slots = self._features[:0], self._slots[:0]
        self._absorb_commit(new)

    def _absorb_commit(self, new: torch.Tensor) -> None:
        """Queue the newly committed pairs ([num_new, H] true features) behind the cached ones."""
        # tree pairs were fed predicted features: drop all their KV (survivors recompute lazily)
        self.set_length(self.num_cached_committed)
        self._pending = torch.cat([self._pending, new])
        self._root_output = None

    def _on_reset(self, features: torch.Tensor | None) -> None:
        pending = self._check_features(features, len(self.committed_ids) - 1)
        self.set_length(0)  # takes a slot again after a release
        self._start(pending)

    def _start(self, pending: torch.Tensor) -> None:
        """Nothing cached; `pending` ([P, H]) committed pairs wait for the next forward."""
        self.num_cached_committed = 0
        self._features = pending.new_zeros(0, self.model.config.hidden_size)  # [N, H]
        self._slots = torch.zeros(0, dtype=torch.long)  # [N] slot entry of each node's pair, -1 = none
        self._root_output = None  # [H] output of the root's pair, once computed
        self._pending = pending  # [P, H]

    def _check_features(self, features: torch.Tensor | None, num_rows: int) -> torch.Tensor:
        hidden_size = self.model.config.hidden_size
        if features is None:
            raise ValueError("the falcon drafter needs the target's features of every committed position")
        if tuple(features.shape) != (num_rows, hidden_size):
            raise ValueError(f"expected features of shape [{num_rows}, {hidden_size}], "
                             f"got {list(features.shape)}")
        param = self.model.placeholder
        return features.detach().to(device=param.device, dtype=param.dtype)

    def release(self) -> None:
        """Give the slot back and drop the tree; the session is unusable until `reset()`."""
        super().release()
        self._start(self._pending[:0])

"""Autoregressive drafting with any small HF causal LM that shares the target's tokenizer.

Each step is one forward of the small model over the nodes it expands (tree attention over the
session's slot of the drafter's slot cache; the steps of every request being drafted share one
forward, workers/drafters/batched.py). Slot layout: committed x[0 .. C-1) | root | tree nodes in
feeding order. Node KV depends only on its ancestors' tokens, so a re-root keeps the surviving
subtree's entries exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from protocol.errors import ModelMismatchError
from workers.batch_mask import Row
from workers.drafters.base import DraftSession
from workers.drafters.batched import BatchedDrafter, BatchedSession, StepPlan
from workers.hf_model import load_causal_lm
from workers.lean_decoder import LeanDecoder
from workers.slot_cache import SlotCache
from workers.tree import ROOT
from workers.tree_policy import TreeConfig, children_to_add, expansion_values, pick_expansions


class ModelSession(BatchedSession):
    def __init__(self, drafter: ModelDrafter, committed_ids: Sequence[int], config: TreeConfig) -> None:
        super().__init__(drafter, committed_ids, config)
        self.drafter = drafter
        self.num_cached = 0  # committed positions in the cache (slots 0 .. num_cached)
        self.root_slot = -1
        self.root_top: tuple[torch.Tensor, torch.Tensor] | None = None  # drafter top-k after the root
        self._clear_nodes()

    def _clear_nodes(self) -> None:
        k = self.config.top_k
        self.node_slots = torch.full((0,), -1, dtype=torch.long)  # cache slot per tree node, -1 = none
        self.node_top_ids = torch.zeros(0, k, dtype=torch.long)  # [N, K] drafter top-k after each node
        self.node_top_probs = torch.zeros(0, k)
        self.node_has_top = torch.zeros(0, dtype=torch.bool)

    def _align_nodes(self) -> None:
        """Extend per-node arrays to the current tree size (new nodes have no slot and no top-k)."""
        extra = self.tree.num_nodes - self.node_slots.numel()
        if extra:
            k = self.config.top_k
            self.node_slots = torch.cat([self.node_slots, torch.full((extra,), -1, dtype=torch.long)])
            self.node_top_ids = torch.cat([self.node_top_ids, torch.zeros(extra, k, dtype=torch.long)])
            self.node_top_probs = torch.cat([self.node_top_probs, torch.zeros(extra, k)])
            self.node_has_top = torch.cat([self.node_has_top, torch.zeros(extra, dtype=torch.bool)])

    def expansion_values(self) -> torch.Tensor:
        return expansion_values(self.tree, self.config)

    def _on_prune(self, kept: torch.Tensor) -> None:
        self._align_nodes()
        if int((self.node_slots >= 0).sum()) != int((self.node_slots[kept] >= 0).sum()):
            raise RuntimeError("a pruned node had a cached entry")
        self.node_slots, self.node_top_ids = self.node_slots[kept], self.node_top_ids[kept]
        self.node_top_probs, self.node_has_top = self.node_top_probs[kept], self.node_has_top[kept]

    def plan(self, max_expansions: int | None) -> StepPlan | None:
        picked = pick_expansions(self.tree, self.config, max_expansions)
        if picked.numel() == 0:
            return None
        self._align_nodes()
        inner = picked[picked >= 0]
        needed = self.tree.ancestors()[inner].any(dim=0) if inner.numel() else self.node_slots < -1
        feed = torch.nonzero(needed & (self.node_slots < 0)).flatten()
        if feed.numel() or (self.root_top is None):
            row, fed = self._feed(feed)
            return StepPlan(row, state=(picked, feed, fed))
        return StepPlan(None, state=(picked, feed, None))

    def apply(self, plan: StepPlan, hidden: torch.Tensor | None) -> None:
        picked, feed, fed = plan.state
        if hidden is not None:
            self._absorb_forward(feed, fed, hidden)
        top_ids, top_probs = self._tops(picked)
        parents, tokens, probs = children_to_add(self.tree, picked, top_ids, top_probs, self.config)
        self.tree = self.tree.add(parents, tokens, probs)
        self._align_nodes()

    def _tops(self, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[E, K] drafter top-k after each node (ROOT = the root); every node was fed before."""
        ids = torch.zeros(nodes.numel(), self.config.top_k, dtype=torch.long)
        probs = torch.zeros(nodes.numel(), self.config.top_k)
        is_root = nodes == ROOT
        ids[~is_root], probs[~is_root] = self.node_top_ids[nodes[~is_root]], self.node_top_probs[nodes[~is_root]]
        if bool(is_root.any()):
            if self.root_top is None:
                raise RuntimeError("the root was not fed before its expansion")
            ids[is_root], probs[is_root] = self.root_top[0], self.root_top[1]
        return ids, probs

    def _feed(self, feed: torch.Tensor) -> tuple[Row, tuple[int, bool, int]]:
        """The row feeding pending committed tokens, the root (if uncached) and tree nodes `feed`."""
        num_committed = len(self.committed_ids) - 1  # positions before the root
        pending = self.committed_ids[self.num_cached:num_committed]
        feed_root = self.root_slot < 0
        past = self.cache_length
        num_pending, num_tree = len(pending), int(feed_root) + feed.numel()
        num_query = num_pending + num_tree
        # slots of everything fed, in feeding order
        if feed_root:
            self.root_slot = past + num_pending
        self.node_slots[feed] = past + num_pending + int(feed_root) + torch.arange(feed.numel())
        visible = torch.zeros(num_query, past + num_query, dtype=torch.bool)
        visible[:num_pending, : past + num_pending] = torch.ones(num_pending, past + num_pending).tril(past).bool()
        visible[num_pending:, :num_committed] = True
        visible[num_pending:, self.root_slot] = True
        cached = torch.nonzero(self.node_slots >= 0).flatten()
        node_rows = num_pending + int(feed_root) + torch.arange(feed.numel())
        ancestors = self.tree.ancestors()
        visible[node_rows[:, None], self.node_slots[cached][None, :]] = ancestors[feed][:, cached]
        positions = torch.cat([torch.arange(self.num_cached, num_committed),
                               torch.tensor([num_committed] if feed_root else [], dtype=torch.long),
                               num_committed + self.tree.depths[feed]])
        tokens = torch.cat([torch.tensor(pending, dtype=torch.long),
                            torch.tensor([self.root_token] if feed_root else [], dtype=torch.long),
                            self.tree.token_ids[feed]])
        return Row.step(tokens, positions, visible, past), (num_pending, feed_root, past + num_query)

    def _absorb_forward(self, feed: torch.Tensor, fed: tuple[int, bool, int], hidden: torch.Tensor) -> None:
        """Keep every fed entry; top-k after the root (if fed) and after each fed node."""
        num_pending, feed_root, length = fed
        self.set_length(length)
        self.num_cached = len(self.committed_ids) - 1
        top_probs, top_ids = torch.topk(torch.softmax(self.drafter.logits(hidden[num_pending:]), -1),
                                        self.config.top_k, dim=-1)  # [T, K]
        if feed_root:
            self.root_top = (top_ids[0], top_probs[0])
        self.node_top_ids[feed] = top_ids[int(feed_root):]
        self.node_top_probs[feed] = top_probs[int(feed_root):]
        self.node_has_top[feed] = True

    def _absorb_commit(self, old_len: int, bonus_node: int | None) -> None:
        """Move the newly committed entries after the prefix; keep the bonus node's subtree on a hit."""
        self._align_nodes()
        path = self.tree.follow(self.committed_ids[old_len:])
        accepted = torch.tensor(path[: len(self.committed_ids) - old_len - 1], dtype=torch.long)
        new_slots = torch.cat([torch.tensor([self.root_slot]), self.node_slots[accepted]])
        is_contiguous = self.num_cached == old_len - 1
        count = int(torch.cumprod((new_slots >= 0).long(), 0).sum()) if is_contiguous else 0
        keep = torch.cat([torch.arange(self.num_cached), new_slots[:count]])
        self.num_cached += count
        root_slot, root_top = -1, None
        if bonus_node is not None and count == new_slots.numel():
            below = self.tree.ancestors()[:, bonus_node].clone()
            subtree = torch.nonzero(below).flatten()  # bonus node first (lowest index), then its subtree
            slots = self.node_slots[subtree]
            has_slot = slots >= 0
            new_index = torch.full_like(slots, -1)
            new_index[has_slot] = keep.numel() + torch.arange(int(has_slot.sum()))
            keep = torch.cat([keep, slots[has_slot]])
            root_slot = int(new_index[0])
            if self.node_has_top[bonus_node]:
                root_top = (self.node_top_ids[bonus_node], self.node_top_probs[bonus_node])
            rest = subtree[1:]
            self.node_slots, self.node_has_top = new_index[1:], self.node_has_top[rest]
            self.node_top_ids, self.node_top_probs = self.node_top_ids[rest], self.node_top_probs[rest]
        elif bonus_node is not None:  # subtree kept without cache entries; its top-k stay valid
            rest = torch.nonzero(self.tree.ancestors()[:, bonus_node]).flatten()[1:]
            if self.node_has_top[bonus_node]:
                root_top = (self.node_top_ids[bonus_node], self.node_top_probs[bonus_node])
            self.node_slots = torch.full((rest.numel(),), -1, dtype=torch.long)
            self.node_has_top = self.node_has_top[rest]
            self.node_top_ids, self.node_top_probs = self.node_top_ids[rest], self.node_top_probs[rest]
        else:
            self._clear_nodes()
        self.keep(keep)
        self.root_slot, self.root_top = root_slot, root_top

    def _on_reroot(self, path: list[int], old_len: int, features: torch.Tensor | None) -> None:
        self._absorb_commit(old_len, path[-1])

    def _on_rollback(self, old_len: int, features: torch.Tensor | None) -> None:
        self._absorb_commit(old_len, None)

    def _on_reset(self, features: torch.Tensor | None) -> None:
        self.set_length(0)
        self.num_cached, self.root_slot, self.root_top = 0, -1, None
        self._clear_nodes()


class ModelDrafter(BatchedDrafter):
    """A small HF causal LM drafting into a tree by top-k per step (every request's step in one forward)."""

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.decoder = model.get_decoder()
        self.lean = LeanDecoder.build(self.decoder)  # the same states as decoder(...), less Python
        self.lm_head = model.get_output_embeddings()
        self.vocab_size = int(self.lm_head.weight.shape[0])

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                        attn_implementation: str = "sdpa") -> ModelDrafter:
        return cls(load_causal_lm(path, dtype, device, attn_implementation))

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.lm_head.weight.dtype
        return dtype

    def check_target(self, vocab_size: int, hidden_size: int) -> None:
        if vocab_size != self.vocab_size:
            raise ModelMismatchError(f"drafter vocabulary size {self.vocab_size} differs from the target's "
                                     f"{vocab_size}: the draft model must share the target's tokenizer")

    def open(self, committed_ids: Sequence[int], config: TreeConfig,
             features: torch.Tensor | None = None) -> DraftSession:
        return ModelSession(self, committed_ids, config)

    def _new_cache(self, num_slots: int, max_len: int) -> SlotCache:
        return SlotCache.for_model(self.model.config, num_slots, max_len, self.dtype, self.lm_head.weight.device)

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, embeds: torch.Tensor | None, positions: torch.Tensor,
                 mask: torch.Tensor, cache: SlotCache) -> torch.Tensor:
        device = self.lm_head.weight.device
        if self.lean is not None:
            return self.lean(ids.to(device), positions.to(device), mask.to(device), cache)
        out = self.decoder(input_ids=ids.to(device), position_ids=positions.to(device),
                           attention_mask=mask.to(device), past_key_values=cache, use_cache=True)
        hidden: torch.Tensor = out.last_hidden_state  # [B, W, H]
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.lm_head(hidden).float().cpu()
        return logits

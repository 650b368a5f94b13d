"""The target verifier: prefill, one-forward tree verification, KV compaction and rollback.

Works with any Hugging Face causal LM whose decoder takes a 4-D additive attention mask and explicit
position ids (Llama, Qwen2, Mistral and their relatives), with `eager` or `sdpa` attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from protocol.errors import ProtocolError, RequestError
from workers import kv_cache
from workers.batch_mask import Row, batch_inputs
from workers.compiled_forward import CompiledForward
from workers.hf_model import load_causal_lm
from workers.hidden_forward import forward_with_pseudo
from workers.hidden_transfer import TransferMaps
from workers.lean_decoder import LeanDecoder
from workers.pseudo_mask import pseudo_plan
from workers.slot_cache import SlotCache
from workers.tree import DraftTree
from workers.tree_mask import tree_mask


@dataclass
class VerifierState:
    """One request's target cache. Invariant: `cache` holds exactly x[0 .. length)."""

    cache: DynamicCache = field(default_factory=kv_cache.new_cache)
    length: int = 0
    pending: int = 0  # positions appended by the last verify(), waiting for accept()


class TargetVerifier:
    """Wraps a loaded HF causal LM; holds no per-request state itself."""

    def __init__(self, model: Any, lean: bool = True) -> None:
        self.model = model.eval()
        self.config = model.config
        self.decoder = model.get_decoder()
        # transformers' math without its module machinery (workers/lean_decoder.py); None: decoder(...)
        self.lean = LeanDecoder.build(self.decoder) if lean else None
        self.lm_head = model.get_output_embeddings()
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.hidden_size = int(self.config.hidden_size)
        self.max_positions = int(getattr(self.config, "max_position_embeddings", 2**31 - 1))
        self.compiled: CompiledForward | None = None  # verifier.compile: bucketed compiled forwards
        window = getattr(self.config, "sliding_window", None)
        use_window = getattr(self.config, "use_sliding_window", True)
        self.sliding_window = int(window) if window and use_window else None

    @classmethod
    def from_pretrained(cls, path: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                        attn_implementation: str = "sdpa", lean: bool = True) -> TargetVerifier:
        return cls(load_causal_lm(path, dtype, device, attn_implementation), lean)

    @property
    def device(self) -> torch.device:
        device: torch.device = self.lm_head.weight.device
        return device

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = self.lm_head.weight.dtype
        return dtype

    def check_prompt(self, prompt_ids: Sequence[int], max_new_tokens: int = 0) -> None:
        if len(prompt_ids) == 0:
            raise RequestError("prompt is empty: give at least one token")
        if len(prompt_ids) + max_new_tokens > self.max_positions:
            raise RequestError(f"prompt of {len(prompt_ids)} tokens + max_new_tokens {max_new_tokens} exceeds "
                               f"the model's context of {self.max_positions} positions")
        bad = [t for t in prompt_ids if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise RequestError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")

    @torch.inference_mode()
    def prefill(self, state: VerifierState, prompt_ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the prompt. Returns logits after its last token [V] and features at every position [P, H]."""
        self.check_prompt(prompt_ids)
        ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=self.device)
        out = self.decoder(input_ids=ids, past_key_values=state.cache, use_cache=True)
        hidden = out.last_hidden_state[0]  # [P, H]
        state.length = len(prompt_ids)
        return self.lm_head(hidden[-1:])[0].float(), hidden

    @torch.inference_mode()
    def verify(self, state: VerifierState, root_token: int, tree: DraftTree,
               max_nodes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over root + tree after the committed prefix.

        The cache must hold x[0 .. C-1) (root excluded). Returns logits [N+1, V] (row 0 = after the
        root) and features [N+1, H]; the new entries stay in the cache until `accept`.
        """
        if max_nodes is not None and tree.num_nodes > max_nodes:
            raise ProtocolError(f"draft tree has {tree.num_nodes} nodes, more than the budget of {max_nodes} "
                                "(speculation.tree.total_tokens)")
        if (tree.num_nodes and int(tree.token_ids.max()) >= self.vocab_size) or bool((tree.token_ids < 0).any()):
            raise ProtocolError(f"draft tree holds token ids outside the vocabulary [0, {self.vocab_size})")
        if state.pending:
            raise RuntimeError("verify() called twice without accept(): the cache holds unaccepted entries")
        past = state.length
        if past + 1 + tree.max_depth > self.max_positions:
            raise RequestError(f"sequence would reach position {past + tree.max_depth}, beyond the model's "
                               f"context of {self.max_positions}")
        mask, positions = tree_mask(tree, past, self.dtype, self.sliding_window)
        ids = torch.cat([torch.tensor([root_token]), tree.token_ids])[None].to(self.device)
        hidden = self._decode(ids, positions.to(self.device), mask.to(self.device), state.cache)[0]  # [N+1, H]
        state.pending = tree.num_nodes + 1
        return self.lm_head(hidden).float(), hidden

    @torch.inference_mode()
    def forward_rows(self, cache: SlotCache, slots: Sequence[int], starts: Sequence[int],
                     rows: Sequence[Row]) -> torch.Tensor:
        """One batched forward: row b's entries are written into slot slots[b] at starts[b] ... and see that
        slot's prefix [0, starts[b]). Returns last-layer hidden states [B, W, H] (W >= the widest row: a
        compiled forward pads it to its bucket).

        Lengths are not changed: the caller commits what it keeps (`SlotCache.compact` / `set_length`).
        """
        self._check_rows(rows, starts)
        if self.compiled is not None and self.compiled.fits(rows):
            return self.compiled(cache, slots, starts, rows, self.dtype, self.sliding_window, self.device)
        width = max(row.width for row in rows)
        kv_len = cache.begin(slots, starts, width)
        try:
            ids, positions, mask = batch_inputs(rows, starts, kv_len, self.dtype, self.sliding_window)
            return self._decode(ids.to(self.device), positions.to(self.device), mask.to(self.device), cache)
        finally:
            cache.end()

    def _decode(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """Final-normed hidden states [B, W, H] of ids at positions under a 4-D additive mask."""
        if self.lean is not None:
            return self.lean(ids, positions, mask, cache)
        out = self.decoder(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                           use_cache=True)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    @torch.inference_mode()
    def forward_rows_pseudo(self, cache: SlotCache, slots: Sequence[int], starts: Sequence[int], rows: Sequence[Row],
                            maps: TransferMaps, anchors: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward_rows` with Hidden Transfer's pseudo slots: row b's anchors[b] (entries of the row) each get
        k slots after the row's real entries. Returns (real states [B, W, H], slot states [B, A*k, H]).

        The slots' keys and values land in the slot's scratch room after the real entries at layers [l, L),
        beyond what any compaction keeps; no real row sees them (workers/pseudo_mask.py).
        """
        self._check_rows(rows, starts)
        num_offsets = maps.config.num_offsets
        for row, start, chosen in zip(rows, starts, anchors, strict=True):
            if chosen and start + int(row.offsets[list(chosen)].max()) + num_offsets >= self.max_positions:
                raise RequestError(f"pseudo slots would pass the model's context of {self.max_positions}")
        width = max(row.width for row in rows)
        total = max(len(a) for a in anchors) * num_offsets
        kv_len = cache.begin(slots, starts, width + total)
        try:
            ids, positions, mask = batch_inputs(rows, starts, kv_len, self.dtype, self.sliding_window)
            plan = pseudo_plan(rows, starts, anchors, num_offsets, width, kv_len, self.dtype, self.sliding_window)
            return forward_with_pseudo(self.decoder, ids.to(self.device), positions.to(self.device),
                                       mask.to(self.device), cache, maps, plan, self.lean)
        finally:
            cache.end()

    def _check_rows(self, rows: Sequence[Row], starts: Sequence[int]) -> None:
        for row, start in zip(rows, starts, strict=True):
            ids = row.token_ids
            if ids.numel() and (int(ids.max()) >= self.vocab_size or int(ids.min()) < 0):
                raise ProtocolError(f"token ids outside the vocabulary [0, {self.vocab_size})")
            if start + int(row.offsets.max()) >= self.max_positions:
                raise RequestError(f"sequence would reach position {start + int(row.offsets.max())}, beyond "
                                   f"the model's context of {self.max_positions}")

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., V] float32 logits."""
        logits: torch.Tensor = self.lm_head(hidden).float()
        return logits

    def accept(self, state: VerifierState, path: torch.Tensor) -> None:
        """Keep the root and the accepted nodes' entries right after the prefix; drop the rest."""
        root_slot = state.length
        keep = torch.cat([torch.tensor([root_slot]), root_slot + 1 + path.cpu().to(torch.long)])
        kv_cache.keep_positions(state.cache, root_slot, keep)
        state.length = root_slot + keep.numel()
        state.pending = 0

    def rollback(self, state: VerifierState, length: int) -> None:
        """Crop the cache to the first `length` committed positions."""
        kv_cache.crop(state.cache, length)
        state.length = length
        state.pending = 0

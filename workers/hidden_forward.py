"""The target's decoder in two parts, so Hidden Transfer's pseudo states join at an intermediate layer.

The real entries run layers [0, l) as in `decoder(...)`; the maps turn the anchors' states into pseudo
states, which are appended as extra query positions for layers [l, L) (they attend through the same cache
call as the real entries; `pseudo_mask.py` keeps them invisible to real rows). The same code serves the
verifier (slot cache) and training (a frozen prefix of real keys and values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workers.hidden_transfer import TransferMaps
from workers.lean_decoder import LeanDecoder
from workers.pseudo_mask import PseudoPlan


def run_layers(decoder: Any, hidden: torch.Tensor, layers: Sequence[Any], mask: torch.Tensor,
               positions: torch.Tensor, cache: Any) -> torch.Tensor:
    """`hidden` [B, S, H] through `layers` with an additive 4-D mask and explicit positions (as the HF
    decoder's own loop does, the same mask for every layer)."""
    rotary = decoder.rotary_emb(hidden, position_ids=positions)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions,
                       past_key_values=cache, use_cache=cache is not None)
    return hidden


def decoder_layers(decoder: Any) -> list[Any]:
    return list(decoder.layers[: decoder.config.num_hidden_layers])


def forward_with_pseudo(decoder: Any, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Any,
                        maps: TransferMaps, plan: PseudoPlan, lean: LeanDecoder | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(real final-normed states [B, W, H], pseudo final-normed states [B, P, H]).

    mask: [B, 1, W, kv_len] for the real entries (it must not show the slot columns); plan.mask is the
    slots' [B, 1, P, kv_len]. `lean`: the same layers through `LeanDecoder.run` (bitwise the same states).
    """
    layers, split = decoder_layers(decoder), maps.config.layer

    def run(hidden: torch.Tensor, lower: bool, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if lean is not None:
            return lean.run(hidden, range(split) if lower else range(split, len(layers)), mask, positions, cache)
        return run_layers(decoder, hidden, layers[:split] if lower else layers[split:], mask, positions, cache)

    device = decoder.embed_tokens.weight.device
    hidden = run(decoder.embed_tokens(ids), True, mask, positions)
    anchors = plan.anchors.to(device)
    anchor_states = hidden.gather(1, anchors[:, :, None].expand(-1, -1, hidden.shape[-1]))  # [B, A, H]
    pseudo = maps(anchor_states).flatten(1, 2).to(hidden.dtype)  # [B, A*k, H] anchor-major
    width = hidden.shape[1]
    joined = torch.cat([hidden, pseudo], dim=1)
    joined_mask = torch.cat([mask, plan.mask.to(device, mask.dtype)], dim=2)
    joined_positions = torch.cat([positions, plan.positions.to(device)], dim=1)
    joined = decoder.norm(run(joined, False, joined_mask, joined_positions))
    return joined[:, :width], joined[:, width:]


class PrefixKV:
    """A read-only stand-in for a cache in training: each layer's attention sees the real keys / values of
    the whole window (computed once, no grad), then the slots' own."""

    def __init__(self, keys: Sequence[torch.Tensor | None], values: Sequence[torch.Tensor | None]) -> None:
        self.keys, self.values = list(keys), list(values)  # None for layers the slots never pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if keys is None or values is None:
            raise ValueError(f"no real keys and values kept for layer {layer_idx}")
        return (torch.cat([keys.to(key_states.dtype), key_states], dim=2),
                torch.cat([values.to(value_states.dtype), value_states], dim=2))

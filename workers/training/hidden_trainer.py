"""Training Hidden Transfer maps on a frozen target (scripts/train_hidden.py).

One step: the frozen target runs the window once without gradients, keeping its state after layer l at
every position, each upper layer's keys and values, and its next-token distributions. Every position t
then gets k pseudo slots (the maps applied to its state), which run layers [l, L) with the verification
forward's attention pattern (`pseudo_mask.training_mask`: real keys <= t, the earlier slots of t) and the
target's final norm and LM head. Slot (t, j) stands for the row at t + 1 + j, so its loss is the soft
cross-entropy to the target's own distribution there (KL up to a constant), counted where that position's
prediction is the target's own text. Only the maps learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from workers import kv_cache
from workers.hidden_forward import PrefixKV, decoder_layers, run_layers
from workers.hidden_transfer import TransferMaps
from workers.pseudo_mask import training_mask
from workers.training.loop import StepOutput
from workers.training.precision import Precision
from workers.training.self_text import SelfText
from workers.training.tokens import step_generator


@dataclass(frozen=True)
class FrozenPass:
    """What the frozen target gives one batch [B, T] (no grad)."""

    states: torch.Tensor  # [B, T, H] after layers [0, l)
    keys: list[torch.Tensor | None]  # per layer [B, kv_heads, T, D] (None below l)
    values: list[torch.Tensor | None]
    logits: torch.Tensor  # [B, T, V] float32


@torch.no_grad()
def frozen_pass(model: Any, ids: torch.Tensor, layer: int) -> FrozenPass:
    decoder = model.get_decoder()
    length = ids.shape[1]
    dtype = decoder.embed_tokens.weight.dtype
    causal = torch.ones(length, length, dtype=torch.bool, device=ids.device).tril()
    mask = torch.zeros(length, length, dtype=dtype, device=ids.device).masked_fill(~causal, torch.finfo(dtype).min)
    mask = mask[None, None].expand(ids.shape[0], 1, length, length)
    positions = torch.arange(length, device=ids.device)[None].expand(ids.shape[0], length)
    cache = kv_cache.new_cache()
    layers = decoder_layers(decoder)
    states = run_layers(decoder, decoder.embed_tokens(ids), layers[:layer], mask, positions, cache)
    final = decoder.norm(run_layers(decoder, states, layers[layer:], mask, positions, cache))
    cached: list[Any] = list(cache.layers)  # DynamicLayer: .keys / .values [B, kv_heads, T, D]
    keys = [cached[i].keys if i >= layer else None for i in range(len(layers))]
    values = [cached[i].values if i >= layer else None for i in range(len(layers))]
    return FrozenPass(states, keys, values, model.get_output_embeddings()(final).float())


@dataclass(frozen=True)
class HiddenLoss:
    loss: torch.Tensor  # scalar with grad
    agreement: list[float]  # per offset: argmax of slot (t, j) == the target's argmax at t + 1 + j
    chain: list[float]  # per offset: slots (t, 0..j) all agree (a top-1 chain under the bonus is accepted)
    num_counted: list[int]


def hidden_loss(model: Any, maps: TransferMaps, ids: torch.Tensor, weights: torch.Tensor,
                anchors: torch.Tensor | None = None) -> HiddenLoss:
    """Loss of one batch: ids [B, T]; weights [B, T] bool (position i's prediction is the target's own text);
    slots at the positions `anchors` [A] (ascending; default every position)."""
    layer, k = maps.config.layer, maps.config.num_offsets
    frozen = frozen_pass(model, ids, layer)
    decoder = model.get_decoder()
    batch, length, _ = frozen.states.shape
    anchors = torch.arange(length, device=ids.device) if anchors is None else anchors.to(ids.device)
    num = anchors.numel()
    pseudo = maps(frozen.states[:, anchors].float()).flatten(1, 2).to(frozen.states.dtype)  # [B, A*k, H]
    dtype = pseudo.dtype
    visible = training_mask(length, k, anchors)
    mask = torch.zeros(visible.shape, dtype=dtype, device=ids.device).masked_fill(~visible, torch.finfo(dtype).min)
    stands_for = anchors[:, None] + 1 + torch.arange(k, device=ids.device)[None, :]  # [A, k] positions
    out = run_layers(decoder, pseudo, decoder_layers(decoder)[layer:], mask[None, None].expand(batch, 1, -1, -1),
                     stands_for.flatten()[None].expand(batch, -1), PrefixKV(frozen.keys, frozen.values))
    logits = model.get_output_embeddings()(decoder.norm(out)).float().unflatten(1, (num, k))  # [B, A, k, V]
    inside = stands_for < length  # [A, k]: the position a slot stands for is in the window
    index = stands_for.clamp(max=length - 1)
    total, count = logits.new_zeros(()), 0
    agreement, chain, counted = [], [], []
    chained = torch.ones(batch, num, dtype=torch.bool, device=ids.device)
    for j in range(k):
        target = frozen.logits[:, index[:, j]]  # [B, A, V]: the target's distribution where slot j stands
        guess = logits[:, :, j]
        keep = weights[:, index[:, j]] & inside[None, :, j]
        cross = -(torch.softmax(target, dim=-1) * torch.log_softmax(guess, dim=-1)).sum(-1)  # [B, A]
        total = total + (cross * keep).sum()
        right = guess.argmax(-1) == target.argmax(-1)
        chained &= right
        kept = int(keep.sum())
        count += kept
        agreement.append(float((right & keep).sum()) / max(kept, 1))
        chain.append(float((chained & keep).sum()) / max(kept, 1))
        counted.append(kept)
    return HiddenLoss(total / max(count, 1), agreement, chain, counted)


def make_step_fn(model: Any, maps: TransferMaps, data: SelfText, batch_size: int, seed: int,
                 precision: Precision, num_anchors: int = 0) -> Callable[[int], StepOutput]:
    """The loop's step: `batch_size` samples drawn per (seed, step), so a resumed run sees the same data; slots
    at `num_anchors` random positions among those any sample of the batch trains on (0 = every position)."""

    def step_fn(step: int) -> StepOutput:
        generator = step_generator(seed, step)
        index = torch.randint(0, data.ids.shape[0], (batch_size,), generator=generator)
        ids, weights = data.ids[index].to(precision.device), data.weights[index].to(precision.device)
        anchors = None
        if num_anchors:
            useful = torch.nonzero(data.weights[index].any(0)).flatten()  # slot t stands for t + 1 ..: close enough
            pick = torch.randperm(useful.numel(), generator=generator)[:num_anchors]
            anchors = torch.sort((useful[pick] - 1).clamp(min=0)).values
        out = hidden_loss(model, maps, ids, weights, anchors)
        metrics = {f"agree_o{j}": a for j, a in enumerate(out.agreement)}
        return StepOutput(out.loss, int(weights.sum()), metrics)
    return step_fn


@torch.no_grad()
def held_out_metrics(model: Any, maps: TransferMaps, data: SelfText, batch_size: int,
                     precision: Precision) -> dict[str, float]:
    """Loss, agreement and chain acceptance per offset over every held-out sample (weighted by counts)."""
    was_training = maps.training
    maps.eval()
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for begin in range(0, data.ids.shape[0], batch_size):
        ids = data.ids[begin:begin + batch_size].to(precision.device)
        weights = data.weights[begin:begin + batch_size].to(precision.device)
        out = hidden_loss(model, maps, ids, weights)
        num = sum(out.num_counted)
        values = {"loss": (float(out.loss), num)}
        for j, n in enumerate(out.num_counted):
            values[f"agree_o{j}"] = (out.agreement[j], n)
            values[f"chain_o{j}"] = (out.chain[j], n)
        for key, (value, n) in values.items():
            sums[key] = sums.get(key, 0.0) + value * n
            counts[key] = counts.get(key, 0) + n
    maps.train(was_training)
    return {key: sums[key] / max(counts[key], 1) for key in sums}

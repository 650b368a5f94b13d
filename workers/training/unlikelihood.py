"""Sequence-level unlikelihood fine-tuning (Welleck et al., 2019, "Neural Text Generation with
Unlikelihood Training"): the model continues training prefixes greedily, and every token of its own
continuation that sits in a 4-gram it already produced is pushed down with -log(1 - p); a next-token
loss on ordinary training windows in the same step keeps the model a language model. This is how the
demo target stops looping under greedy decoding (models/demo/README.md).

The mask and the loss are pure functions; `make_unlikelihood_step_fn` is the training loop's step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workers.training.lm import LMBatches, next_token_loss
from workers.training.loop import StepOutput


@dataclass(frozen=True)
class UnlikelihoodConfig:
    weight: float = 1.0  # the unlikelihood term's weight next to the next-token loss
    prefix_len: int = 64  # training tokens the model continues from
    num_new: int = 96  # greedy tokens it writes, the ones the unlikelihood term looks at
    ngram: int = 4  # a token is penalised when it is part of an n-gram that occurred before in its row
    batch_size: int = 8  # continuations per step

    def __post_init__(self) -> None:
        for key in ("prefix_len", "num_new", "ngram", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight!r}")


def repeated_ngram_mask(tokens: torch.Tensor, n: int, start: int = 0) -> torch.Tensor:
    """[B, L] bool: True at every position >= `start` that belongs to an n-gram which already occurred
    earlier in the same row (overlapping occurrences count; the part of the row before `start` counts
    as history but is never marked)."""
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be [B, L], got shape {tuple(tokens.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for b, row in enumerate(tokens.tolist()):
        seen: set[tuple[int, ...]] = set()
        for i in range(len(row) - n + 1):
            gram = tuple(row[i:i + n])
            if gram in seen and i + n > start:
                mask[b, max(i, start):i + n] = True
            seen.add(gram)
    return mask


def unlikelihood_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p(x_t | x_<t)) over the positions t > 0 where `mask` is True.

    logits [B, L, V] are the model's outputs over tokens [B, L] (logits[:, t] predict tokens[:, t + 1]);
    with nothing masked the loss is 0 (and still part of the graph)."""
    log_p = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    picked = mask[:, 1:].to(log_p.dtype)
    penalty = -torch.log(torch.clamp(1.0 - log_p.exp(), min=1e-5))
    return (penalty * picked).sum() / picked.sum().clamp(min=1.0)


@torch.no_grad()
def greedy_continue(model: Any, prefixes: torch.Tensor, num_new: int) -> torch.Tensor:
    """[B, P + num_new]: each prefix followed by the model's greedy continuation (EOS is just a token)."""
    was_training = model.training
    model.eval()
    out = model(input_ids=prefixes, use_cache=True)
    pieces = [prefixes]
    for i in range(num_new):
        next_token = out.logits[:, -1].argmax(-1, keepdim=True)
        pieces.append(next_token)
        if i + 1 < num_new:
            out = model(input_ids=next_token, past_key_values=out.past_key_values, use_cache=True)
    model.train(was_training)
    return torch.cat(pieces, dim=1)


def make_unlikelihood_step_fn(model: nn.Module, batches: LMBatches, config: UnlikelihoodConfig) -> Any:
    """The loop's `step_fn`: next-token loss on one batch of training windows plus `weight` times the
    unlikelihood loss on greedy continuations of the first `batch_size` of those windows' prefixes."""
    if batches.seq_len < config.prefix_len:
        raise ValueError(f"prefix_len {config.prefix_len} is longer than the training windows ({batches.seq_len})")

    def step_fn(step: int) -> StepOutput:
        windows = batches(step)
        mle = next_token_loss(model, windows)
        rows = greedy_continue(model, windows[: config.batch_size, : config.prefix_len], config.num_new)
        mask = repeated_ngram_mask(rows, config.ngram, start=config.prefix_len)
        ul = unlikelihood_loss(model(input_ids=rows).logits, rows, mask)
        repeated = float(mask[:, config.prefix_len:].float().mean())
        return StepOutput(mle + config.weight * ul, windows.numel() + rows.numel(),
                          {"mle": float(mle.detach()), "ul": float(ul.detach()), "repeated": repeated})
    return step_fn

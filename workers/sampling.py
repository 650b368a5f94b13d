"""Sampling parameters and the target's token choice (pure functions on tensors).

Randomness is counter-based: the token at sequence position P is drawn by inverse-CDF with a
uniform that depends only on (seed, P). A seeded request therefore produces the same tokens
whatever tree was drafted, in sync, async and verifier-only mode alike, and exactly as if the
target had sampled alone with the same seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from protocol.errors import RequestError
from protocol.params import SamplingParams

__all__ = ["SamplingParams", "choose_tokens", "position_uniforms", "sample_from", "target_probs"]

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def target_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[N, V] logits -> [N, V] float64 probabilities after temperature, top-k, top-p (HF's order)."""
    scores = logits.double() / max(params.temperature, 1e-6)
    if params.top_k > 0 and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    probs = torch.softmax(scores, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= params.top_p  # the top token always stays (mass before it is 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def position_uniforms(seed: int, positions: torch.Tensor) -> torch.Tensor:
    """[N] uniforms in [0, 1) that depend only on (seed, position): a counter-based generator."""
    pos = positions.cpu().numpy().astype(np.uint64)
    mixed = _splitmix64(_splitmix64(np.full_like(pos, seed)) ^ _splitmix64(pos))
    return torch.from_numpy(((mixed >> np.uint64(11)).astype(np.float64)) * 2.0**-53)


def sample_from(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: [N, V] probabilities and [N] uniforms -> [N] token ids."""
    cdf = torch.cumsum(probs.double(), dim=-1)
    targets = (uniforms.double().to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    # a uniform that rounds onto the total would select past the end: take the last possible token
    last_nonzero = probs.shape[-1] - 1 - torch.argmax((probs.flip(-1) > 0).to(torch.int8), dim=-1)
    return torch.minimum(tokens, last_nonzero)


def choose_tokens(logits: torch.Tensor, params: SamplingParams, positions: torch.Tensor) -> torch.Tensor:
    """The target's token at each row: argmax when greedy, else a seeded draw for that position.

    logits: [N, V]; positions: [N] sequence position of the token each row predicts.
    """
    if params.is_greedy:
        return torch.argmax(logits, dim=-1)
    if params.seed is None:
        raise RequestError("sampling needs a seed; call SamplingParams.with_seed() first")
    probs = target_probs(logits, params)
    return sample_from(probs, position_uniforms(params.seed, positions))

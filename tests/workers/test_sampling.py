"""Sampling parameters, target distribution processing and the counter-based generator."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from protocol.errors import RequestError
from tests.stats import chi_square_pvalue
from workers.sampling import SamplingParams, choose_tokens, position_uniforms, sample_from, target_probs


@pytest.mark.parametrize("field,value", [("temperature", -0.5), ("temperature", math.nan), ("top_p", 0.0),
                                         ("top_p", 1.5), ("top_k", -1), ("seed", -3)])
def test_invalid_values_name_the_field(field: str, value: float) -> None:
    kwargs: dict[str, Any] = {field: value}  # each value has its field's type; only its range is wrong
    with pytest.raises(RequestError, match=field):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (0.9, 7, 0.6)])
def test_target_probs_match_transformers_warpers(temperature: float, top_k: int, top_p: float) -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    expected = torch.softmax(scores.double(), dim=-1)
    ours = target_probs(logits, SamplingParams(temperature, top_p, top_k, seed=1))
    assert torch.allclose(ours, expected, atol=1e-6)


def test_uniforms_depend_only_on_seed_and_position() -> None:
    a = position_uniforms(7, torch.arange(100))
    b = position_uniforms(7, torch.arange(50, 150))
    assert torch.equal(a[50:], b[:50])
    assert not torch.equal(a, position_uniforms(8, torch.arange(100)))
    many = position_uniforms(3, torch.arange(20000))
    counts = torch.histc(many.float(), bins=20, min=0, max=1)
    assert chi_square_pvalue(counts, torch.full((20,), 0.05)) > 1e-3


def test_inverse_cdf_never_picks_zero_probability() -> None:
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).expand(1000, -1)
    tokens = sample_from(probs, position_uniforms(1, torch.arange(1000)))
    assert set(tokens.tolist()) == {1, 3}
    assert sample_from(probs[:1], torch.tensor([1.0 - 2**-53])).item() == 3


def test_greedy_is_argmax_and_sampling_needs_seed() -> None:
    logits = torch.tensor([[0.1, 2.0, 0.3]])
    assert choose_tokens(logits, SamplingParams(), torch.tensor([0])).item() == 1
    with pytest.raises(RequestError, match="seed"):
        choose_tokens(logits, SamplingParams(temperature=1.0), torch.tensor([0]))
    assert SamplingParams(temperature=1.0).with_seed().seed is not None

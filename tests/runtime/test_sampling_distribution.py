"""Speculative sampling follows the target's distribution (chi-square against the exact law)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import pytest
import torch

from runtime.generate import speculative_generate
from runtime.stopping import StopRules
from tests.models import tiny_model
from tests.stats import chi_square_pvalue
from workers.drafters.base import Drafter, DraftSession
from workers.drafters.model import ModelDrafter
from workers.drafters.ngram import NgramDrafter
from workers.sampling import SamplingParams, target_probs
from workers.target import TargetVerifier
from workers.tree import ROOT, DraftTree
from workers.tree_policy import TreeConfig

VOCAB = 24
PROMPT = [5, 9, 5, 9, 5]
NUM_SAMPLES = 1000
TREE = TreeConfig(total_tokens=10, depth=3, top_k=3)


@cache
def target() -> Any:
    return tiny_model("llama", seed=21, vocab_size=VOCAB, hidden_size=32, initializer_range=0.08)


class WrongSession(DraftSession):
    """Proposes the target's *least* likely tokens (fixed ids 20..23) as a deep tree."""

    def grow(self, max_expansions: int | None = None) -> bool:
        if self.tree.num_nodes:
            return False
        self.tree = DraftTree.from_lists([20, 21, 22, 23, 20, 21], [ROOT, ROOT, 0, 0, 2, 4], [0.9] * 6)
        return True

    def _on_rollback(self, old_len: int, features: torch.Tensor | None) -> None:
        pass

    def _on_reset(self, features: torch.Tensor | None) -> None:
        pass


class WrongDrafter(Drafter):
    def open(self, committed_ids: Sequence[int], config: TreeConfig,
             features: torch.Tensor | None = None) -> DraftSession:
        return WrongSession(committed_ids, config)


def exact_second_token_law(params: SamplingParams) -> torch.Tensor:
    """P(x2) = sum_x1 p(x1) p(x2 | x1) for the first two generated tokens."""
    model = target()
    with torch.no_grad():
        first = target_probs(model(torch.tensor([PROMPT])).logits[0, -1:], params)[0]  # [V]
        batch = torch.tensor([[*PROMPT, x] for x in range(VOCAB)])
        second = target_probs(model(batch).logits[:, -1], params)  # [V, V]
    return first @ second


DRAFTERS: dict[str, Callable[[], Drafter | None]] = {"off": lambda: None, "ngram": NgramDrafter, "wrong": WrongDrafter,
            "self": lambda: ModelDrafter(target()),
            "other-model": lambda: ModelDrafter(tiny_model("llama", seed=5, vocab_size=VOCAB, hidden_size=32))}


SETTINGS = [(1.0, 0, 1.0), (0.8, 6, 1.0), (1.2, 0, 0.7)]
FULL_GRID = [pytest.param(d, *s, marks=pytest.mark.slow) for d in DRAFTERS for s in SETTINGS]
DEFAULT = [("wrong", 1.0, 0, 1.0), ("other-model", 0.8, 6, 1.0), ("self", 1.2, 0, 0.7)]


@pytest.mark.parametrize("drafter_name,temperature,top_k,top_p", [*DEFAULT, *FULL_GRID])
def test_second_token_follows_target_law(drafter_name: str, temperature: float, top_k: int, top_p: float) -> None:
    verifier = TargetVerifier(target())
    drafter: Drafter | None = DRAFTERS[drafter_name]()
    counts = torch.zeros(VOCAB)
    num_verifications = 0
    for seed in range(NUM_SAMPLES):
        params = SamplingParams(temperature, top_p, top_k, seed=seed)
        result = speculative_generate(verifier, drafter, PROMPT, params, StopRules(3), TREE)
        counts[result.token_ids[1]] += 1
        num_verifications += result.stats.num_verifications
    law = exact_second_token_law(SamplingParams(temperature, top_p, top_k, seed=0))
    assert chi_square_pvalue(counts, law) > 1e-3
    if drafter_name == "self":
        assert num_verifications < 2 * NUM_SAMPLES  # the right drafter is accepted often


def test_seeded_output_is_independent_of_drafting() -> None:
    """Counter-based randomness: the same seed gives the same tokens with or without speculation."""
    verifier = TargetVerifier(target())
    params = SamplingParams(temperature=0.9, top_p=0.9, seed=1234)
    outputs = {name: speculative_generate(verifier, make(), PROMPT, params, StopRules(20), TREE).token_ids
               for name, make in DRAFTERS.items()}
    assert len({tuple(v) for v in outputs.values()}) == 1, outputs

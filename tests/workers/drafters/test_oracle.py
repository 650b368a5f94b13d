"""The benchmark-only oracle drafter: right with probability p, reproducible, and lossless."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from runtime.generate import speculative_generate
from runtime.stopping import StopRules
from tests.models import tiny_model
from workers.drafters.oracle import OracleDrafter
from workers.target import TargetVerifier
from workers.tree_policy import TreeConfig

VOCAB = 96
TREE = TreeConfig(total_tokens=16, depth=5, top_k=3)


def greedy_reference(model: Any, prompt: list[int], max_new: int) -> list[int]:
    """prompt + the target's greedy continuation of exactly `max_new` tokens (EOS not special)."""
    model.generation_config.eos_token_id = None
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new, min_new_tokens=max_new,
                         pad_token_id=0)
    return [int(t) for t in out[0]]


@pytest.mark.parametrize("p", [0.3, 0.8])
def test_main_proposal_is_right_with_probability_p(p: float) -> None:
    n = 20000
    oracle = OracleDrafter([[5] * (n + 1)], VOCAB, p, seed=3)
    rate = float(oracle.is_right(0, torch.arange(n)).double().mean())
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_proposals_are_distinct_and_wrong_ones_are_never_the_reference() -> None:
    reference = [int(t) for t in torch.randint(0, VOCAB, (500,), generator=torch.Generator().manual_seed(0))]
    oracle = OracleDrafter([reference], VOCAB, 0.5, seed=1)
    right = oracle.is_right(0, torch.arange(500))
    for position in range(500):
        tokens = oracle.proposals(0, position, 4)
        assert len(tokens) == 4 and len(set(tokens)) == 4
        assert all(0 <= t < VOCAB for t in tokens)
        assert (tokens[0] == reference[position]) == bool(right[position])
        assert reference[position] not in tokens[1:]


def test_same_seed_same_proposals_other_seed_other_ones() -> None:
    reference = list(range(3, 90))
    a, b, c = (OracleDrafter([reference], VOCAB, 0.5, seed=s) for s in (7, 7, 8))
    assert [a.proposals(0, i, 3) for i in range(80)] == [b.proposals(0, i, 3) for i in range(80)]
    assert [a.proposals(0, i, 3) for i in range(80)] != [c.proposals(0, i, 3) for i in range(80)]


def test_session_finds_its_reference_grows_the_main_chain_and_reroots() -> None:
    references = [[1, 2, 3, 10, 11, 12, 13, 14, 15], [1, 2, 4, 20, 21, 22, 23, 24, 25]]
    oracle = OracleDrafter(references, VOCAB, 1.0)
    session = oracle.open([1, 2, 4], TreeConfig(total_tokens=16, depth=3, top_k=2))
    for _ in range(4):
        assert session.grow()
    assert session.tree.num_nodes == 8 and session.tree.max_depth == 4
    assert len(session.tree.follow([20, 21, 22, 23])) == 4  # always right with p = 1
    assert session.commit([20, 21])  # accepted 20, bonus 21: a re-root hit
    assert session.tree.max_depth == 2 and len(session.tree.follow([22, 23])) == 2
    assert session.grow() and len(session.tree.follow([22, 23, 24])) == 3
    assert not session.commit([22, 99])  # off the reference: nothing more to propose
    assert not session.grow()
    assert oracle.open([7, 7], TREE).grow() is False  # no reference starts with this prompt


def test_wrong_proposals_are_never_accepted() -> None:
    reference = list(range(3, 40))
    session = OracleDrafter([reference], VOCAB, 0.0).open(reference[:5], TREE)
    session.grow()
    assert session.tree.follow([reference[5]]) == []


def test_greedy_output_equals_generate_and_acceptance_is_near_p() -> None:
    model = tiny_model("llama", seed=11)
    verifier = TargetVerifier(model)
    max_new, p = 120, 0.6
    prompts = [[int(t) for t in torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(n))]
               for n in (5, 17, 40)]
    references = [greedy_reference(model, ids, max_new) for ids in prompts]
    oracle = OracleDrafter(references, VOCAB, p, seed=2)
    accepted, reached = [0, 0], [0, 0]  # depths 1 and 2
    for ids, reference in zip(prompts, references, strict=True):
        result = speculative_generate(verifier, oracle, ids, rules=StopRules(max_new), tree=TREE)
        assert result.token_ids == reference[len(ids):]
        for d in (0, 1):
            accepted[d] += result.stats.accepted_per_depth[d]
            reached[d] += result.stats.reached_per_depth[d]
    # each verification's first node is an independent coin; a depth-2 node is accepted when its own
    # coin is right, given that its parent was accepted: both rates are close to p
    assert reached[0] > 80 and accepted[0] > 40
    assert abs(accepted[0] / reached[0] - p) < 5 * math.sqrt(p * (1 - p) / reached[0])
    assert abs(accepted[1] / accepted[0] - p) < 5 * math.sqrt(p * (1 - p) / accepted[0])

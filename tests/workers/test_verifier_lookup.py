"""The verifier's own prompt lookup: with no drafter tree it drafts from the request's tokens, losslessly."""

from __future__ import annotations

import pytest

from protocol.messages import Committed, Draft, Prefill
from tests.models import hf_greedy, tiny_model
from workers.target import TargetVerifier
from workers.tree import DraftTree
from workers.verifier_worker import VerifierWorker
from workers.wire import tree_blobs

PROMPT = [5, 6, 7, 8, 9, 10, 11, 5, 6, 7, 8, 9, 10, 11, 5, 6]  # it repeats: prompt lookup finds continuations


def run(local_lookup: bool) -> tuple[list[int], int]:
    worker = VerifierWorker(TargetVerifier(tiny_model("llama", seed=5)), "v", local_lookup=local_lookup)
    worker.handle(Prefill("r", len(PROMPT), PROMPT, {"temperature": 0.0}, sample_next=True, max_tree_nodes=16,
                          mode="async", max_length=len(PROMPT) + 40))
    nodes = 0
    while worker.has_work():
        for reply in worker.step():
            assert isinstance(reply, Committed)
            nodes += reply.num_nodes
    return worker.requests["r"].committed[len(PROMPT):][:40], nodes


@pytest.mark.parametrize("local_lookup", [True, False])
def test_lookup_is_lossless_and_only_used_when_on(local_lookup: bool) -> None:
    tokens, nodes = run(local_lookup)
    reference = hf_greedy(tiny_model("llama", seed=5), PROMPT, 40)
    assert tokens[: len(reference)] == reference
    assert (nodes > 0) == local_lookup


@pytest.mark.parametrize("merge_sources", [False, True])
def test_drafter_tree_stays_held_when_the_lookup_is_verified(merge_sources: bool) -> None:
    """Verifying the lookup's nodes must not drop the drafter's tree: it follows the commit like any held
    tree, so an async drafter's work survives a verification it did not win."""
    model = tiny_model("llama", seed=5)
    prompt = [18, 30, 31, *PROMPT]  # the first greedy token (18) occurs in it, so the lookup offers (18, 30, 31)
    reference = hf_greedy(model, prompt, 8)
    worker = VerifierWorker(TargetVerifier(model), "v", merge_sources=merge_sources)
    worker.handle(Prefill("r", len(prompt), prompt, {"temperature": 0.0}, sample_next=True, max_tree_nodes=16,
                          mode="async", max_length=len(prompt) + 40))
    while worker.requests["r"].prefill is not None:
        worker.step()
    request = worker.requests["r"]
    assert request.committed[len(prompt):] == reference[:1]
    # the drafter spells the true continuation, but with probabilities so low that the lookup wins
    chain = reference[1:8]
    draft = Draft("r", len(request.committed), request.committed[-1],
                  *tree_blobs(DraftTree.from_lists(chain, list(range(-1, len(chain) - 1)), [1e-4] * len(chain))))
    worker.handle(draft)
    [reply] = worker.step()
    assert isinstance(reply, Committed)
    assert request.chosen_source == ("drafter+lookup" if merge_sources else "lookup")
    committed_since = reply.token_ids
    assert committed_since == reference[1: 1 + len(committed_since)]
    left = chain[len(committed_since):]
    assert request.tree.token_ids.tolist() == left  # the drafter's chain, re-rooted along the commit

"""The verifier's own prompt lookup: with no drafter tree it drafts from the request's tokens, losslessly."""

from __future__ import annotations

import pytest

from protocol.messages import Committed, Prefill
from tests.models import hf_greedy, tiny_model
from workers.target import TargetVerifier
from workers.verifier_worker import VerifierWorker

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

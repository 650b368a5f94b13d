"""Log-probabilities from logits (pure functions), and the verifier sharing a prompt between samples."""

from __future__ import annotations

import torch

from protocol.messages import Committed, Message, Prefill
from tests.models import tiny_model
from workers.logprobs import committed_rows, prompt_logprobs, token_logprobs
from workers.target import TargetVerifier
from workers.verifier_worker import VerifierWorker
from workers.wire import from_blob

PROMPT = [5, 9, 13, 7, 21, 30, 8]


def test_token_logprobs_are_the_raw_log_softmax_with_the_best_alternatives() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 3.5, 1.0]])
    out = token_logprobs(logits, [1, 3], 2)
    want = torch.log_softmax(logits, dim=-1)
    assert out.token_ids == [1, 3] and out.logprobs == [float(want[0, 1]), float(want[1, 3])]
    assert out.top_ids == [[0, 1], [2, 1]]
    assert out.top_logprobs == want.topk(2, dim=-1).values.tolist()
    assert token_logprobs(logits, [1, 3], 0).top_ids == [[], []]


def test_committed_rows_are_the_root_then_each_accepted_node() -> None:
    assert committed_rows(torch.tensor([2, 5])).tolist() == [0, 3, 6]
    assert committed_rows(torch.zeros(0, dtype=torch.long)).tolist() == [0]


def test_prompt_logprobs_of_a_chunk_leave_out_the_row_after_the_prompt() -> None:
    logits = torch.randn(3, 40)  # after positions 4, 5, 6 of a 7-token prompt
    out = prompt_logprobs(logits, PROMPT, 4, 1)
    assert out.token_ids == PROMPT[5:]  # positions 4 and 5 predict tokens 5 and 6; position 6 predicts no prompt token
    assert out.logprobs == torch.log_softmax(logits[:2], dim=-1)[[0, 1], PROMPT[5:]].tolist()
    assert len(prompt_logprobs(logits[2:], PROMPT, 6, 1)) == 0


def prefilled(worker: VerifierWorker, messages: list[Message]) -> dict[str, Committed]:
    """Each new request's first commit (its prefill's), once every prompt is cached."""
    replies = [r for m in messages for r in worker.handle(m)]
    while any(r.prefill is not None for r in worker.requests.values()):
        replies += worker.step()  # verifications of prefilled requests come in between
    first: dict[str, Committed] = {}
    for reply in replies:
        if isinstance(reply, Committed):
            first.setdefault(reply.request_id, reply)
    return first


def test_samples_share_the_prompt_and_get_what_a_lone_prefill_gets() -> None:
    """Sample 1 copies sample 0's cached prompt (and features) instead of running it: its first token's
    logprobs and its features equal those of the same request prefilled alone."""
    worker = VerifierWorker(TargetVerifier(tiny_model("llama", seed=3)), "v", max_running=4, prefill_chunk=4)

    def prefill(request_id: str, prefix_from: str = "") -> Prefill:
        return Prefill(request_id, len(PROMPT), PROMPT, {"temperature": 1.0, "seed": 7}, want_features=True,
                       num_logprobs=3, num_prompt_logprobs=3 if not prefix_from else None, prefix_from=prefix_from)

    shared = prefilled(worker, [prefill("a"), prefill("a#1", prefix_from="a")])
    assert worker.counters["num_prefixes_shared"] == 1
    alone = prefilled(worker, [prefill("b")])["b"]
    sample = shared["a#1"]
    assert sample.token_ids == alone.token_ids and sample.logprobs is not None and alone.logprobs is not None
    torch.testing.assert_close(torch.tensor(sample.logprobs.top_logprobs), torch.tensor(alone.logprobs.top_logprobs),
                               atol=1e-5, rtol=0)
    assert sample.features is not None and alone.features is not None
    torch.testing.assert_close(from_blob(sample.features), from_blob(alone.features), atol=1e-5, rtol=0)
    assert shared["a"].prompt_logprobs is not None and sample.prompt_logprobs is None  # only sample 0 scores it
    assert shared["a"].prompt_logprobs.token_ids == PROMPT[1:]

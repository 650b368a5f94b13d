"""Every reported speculation metric equals a value this test computes from what the workers did."""

from __future__ import annotations

from typing import Any

from protocol.codec import decode, encode
from protocol.messages import Chunk, Committed, Generate, Heartbeat, Message
from runtime.config import TandemConfig
from runtime.coordinator import Coordinator
from tests.models import hf_greedy, tiny_model
from workers.drafter_worker import DrafterWorker
from workers.drafters.model import ModelDrafter
from workers.target import TargetVerifier
from workers.tree import DraftTree
from workers.verifier_request import VerifierRequest
from workers.verifier_worker import VerifierWorker

PROMPT = [5, 6, 7, 8, 9, 10]
DRAFTER_STEPS_PER_ROUND = 6  # the drafter runs ahead, as a cheap drafter does next to a big target


class RecordingVerifier(VerifierWorker):
    """Records the tree it held before each verification and what it verified."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: list[DraftTree] = []
        self.verified: list[DraftTree] = []

    def _choose_batch(self, requests: list[VerifierRequest]) -> list[DraftTree]:
        chosen = super()._choose_batch(requests)
        self.held.extend(request.tree for request in requests)
        self.verified.extend(chosen)
        return chosen


def wire(message: Message) -> Message:
    return decode(encode(message))


def run() -> tuple[Coordinator, RecordingVerifier, list[Committed], dict[str, Any]]:
    config = TandemConfig.from_dict({"verifier": {"model": "unused"}, "drafter": {"kind": "ngram"},
                                     "speculation": {"mode": "async", "tree": {"total_tokens": 4, "depth": 4,
                                                                                "top_k": 2}}})
    coordinator = Coordinator(config, None, {"vocab_size": 96, "hidden_size": 64})
    # the drafter's trees only (the verifier's own lookup would take over on this repetitive output)
    # it verifies at most 4 nodes of a deeper tree from a perfect drafter: the bonus token lies in the
    # held tree, so re-root hits happen whatever the thread count does to near-tied drafter choices
    verifier = RecordingVerifier(TargetVerifier(tiny_model("llama", seed=11)), "v", local_lookup=False)
    drafter = DrafterWorker(ModelDrafter(tiny_model("llama", seed=11)), config.speculation.tree, "async", "d")
    handlers: dict[bytes, Any] = {b"v": verifier, b"d": drafter}
    for identity, handler in handlers.items():
        coordinator.on_worker(identity, handler.hello())
    coordinator.on_client(b"c", Generate("r", prompt_ids=PROMPT, max_new_tokens=60, ignore_eos=True))
    results: list[Committed] = []
    final: dict[str, Any] = {}
    tokens: list[int] = []
    for _ in range(2000):
        outbox, coordinator.outbox = coordinator.outbox, []
        for identity, message, to_client in outbox:
            if to_client:
                if isinstance(message, Chunk):
                    tokens += message.token_ids
                    final = message.stats or final
                continue
            for reply in handlers[identity].handle(wire(message)):
                coordinator.on_worker(identity, wire(reply))
        if final:
            break
        for identity, handler in handlers.items():
            for _ in range(DRAFTER_STEPS_PER_ROUND if identity == b"d" else 1):
                if not handler.has_work():
                    break
                for reply in handler.step():
                    is_commit = isinstance(reply, Committed) and bool(reply.token_ids)
                    if is_commit and reply.epoch > len(PROMPT):  # not the prefill
                        results.append(reply)
                    coordinator.on_worker(identity, wire(reply))
    reference = hf_greedy(tiny_model("llama", seed=11), PROMPT, 60)  # stops early at EOS; we ignore EOS
    assert len(tokens) == 60 and tokens[: len(reference)] == reference
    for identity, handler in handlers.items():
        coordinator.on_worker(identity, Heartbeat(handler.worker_id, handler.stats()))
    return coordinator, verifier, results, final


def test_per_request_stats_equal_independent_counts() -> None:
    _, verifier, applied, stats = run()
    assert stats["num_verifications"] == len(applied) > 10
    assert len(verifier.verified) == len(applied)  # the verifier stopped at max_new_tokens by itself
    assert stats["num_draft_tokens"] == sum(t.num_nodes for t in verifier.verified) > 0
    # τ: committed tokens per verification, the last commit cut at max_new_tokens
    assert stats["num_committed"] == 60 - 1  # the prefill's first token is not a verification's
    assert abs(stats["tau"] - 59 / len(applied)) < 1e-12
    # acceptance per depth from the trees actually verified and the tokens committed
    accepted, reached = [0] * 8, [0] * 8
    for tree, result in zip(verifier.verified, applied, strict=True):
        for d in range(tree.max_depth):
            reached[d] += 1
        for d in range(len(result.token_ids) - 1):
            accepted[d] += 1
    depth = len(stats["reached_per_depth"])
    assert stats["reached_per_depth"] == reached[:depth] and stats["accepted_per_depth"] == accepted[:depth]
    # a re-root hit: the tree held before a verification spelled everything it committed
    hits = 0
    for held, result in zip(verifier.held, applied, strict=True):
        hits += int(held.num_nodes > 0 and len(held.follow(result.token_ids)) == len(result.token_ids))
    assert stats["num_reroot_hits"] == hits > 0
    assert abs(stats["reroot_hit_rate"] - hits / len(applied)) < 1e-12


def test_deployment_metrics_agree_with_the_single_request() -> None:
    coordinator, _, _, stats = run()
    metrics = coordinator.metrics_snapshot()
    for key in ("num_verifications", "num_committed", "accepted_per_depth", "reached_per_depth",
                "num_reroot_hits", "num_draft_tokens"):
        assert metrics[key] == stats[key], key
    assert metrics["num_generated"] == 60
    assert metrics["drafter_steps"] == coordinator.metrics.worker_stats["d"]["num_grow_steps"] > 0

"""The coordinator core in-process: stale, duplicate and out-of-order worker messages are dropped."""

from __future__ import annotations

import random

import pytest

from protocol.codec import decode, encode
from protocol.messages import Chunk, Committed, Draft, Generate, Message
from runtime.config import TandemConfig
from runtime.coordinator import Coordinator
from tests.models import hf_greedy, tiny_model
from workers.drafter_worker import DrafterWorker
from workers.drafters.model import ModelDrafter
from workers.target import TargetVerifier
from workers.verifier_worker import VerifierWorker

PROMPT = [5, 6, 7, 8, 9, 10]


def setup(mode: str) -> tuple[Coordinator, dict[bytes, object]]:
    config = TandemConfig.from_dict({"verifier": {"model": "unused"}, "drafter": {"kind": "ngram"},
                                     "speculation": {"mode": mode, "tree": {"total_tokens": 12, "depth": 4,
                                                                             "top_k": 3}}})
    target = tiny_model("llama", seed=11)
    coordinator = Coordinator(config, None, {"vocab_size": 96, "hidden_size": 64}, frozenset({2}))
    handlers: dict[bytes, object] = {
        b"v": VerifierWorker(TargetVerifier(target), "v"),
        b"d": DrafterWorker(ModelDrafter(target), config.speculation.tree, mode, "d", vocab_size=96)}
    for identity, handler in handlers.items():
        coordinator.on_worker(identity, handler.hello())  # type: ignore[attr-defined]
    return coordinator, handlers


def wire(message: Message) -> Message:
    return decode(encode(message))


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_duplicates_and_replays_change_nothing(mode: str) -> None:
    coordinator, handlers = setup(mode)
    coordinator.on_client(b"client", Generate("r1", prompt_ids=PROMPT, max_new_tokens=40))
    rng = random.Random(0)
    history: list[tuple[bytes, Message]] = []
    tokens: list[int] = []
    finished = False
    injected = 0
    for _ in range(500):
        if finished:
            break
        outbox, coordinator.outbox = coordinator.outbox, []
        for identity, message, to_client in outbox:
            if to_client:
                if isinstance(message, Chunk):
                    tokens += message.token_ids
                    finished = finished or message.finish_reason is not None
                continue
            handler = handlers[identity]
            replies = handler.handle(wire(message))  # type: ignore[attr-defined]
            if not replies and handler.has_work():  # type: ignore[attr-defined]
                replies = handler.step()  # type: ignore[attr-defined]
            for reply in replies:
                coordinator.on_worker(identity, wire(reply))
                coordinator.on_worker(identity, wire(reply))  # duplicate delivery
                injected += 1
                history.append((identity, reply))
            if len(history) > 3:  # replay an old result or draft, out of order
                old_identity, old = history[rng.randrange(len(history) - 2)]
                if isinstance(old, (Committed, Draft)):
                    coordinator.on_worker(old_identity, wire(old))
                    injected += 1
        if not coordinator.outbox and not finished:
            drafter = handlers[b"d"]
            for reply in drafter.step():  # type: ignore[attr-defined]
                coordinator.on_worker(b"d", wire(reply))
    assert finished
    assert tokens == hf_greedy(tiny_model("llama", seed=11), PROMPT, 40)
    assert coordinator.metrics.num_stale_dropped >= injected // 2


def test_a_result_for_another_epoch_is_not_applied() -> None:
    coordinator, _ = setup("sync")
    coordinator.on_client(b"client", Generate("r1", prompt_ids=PROMPT, max_new_tokens=10))
    request = coordinator.requests["r1"]
    forged = Committed("r1", epoch=request.epoch + 3, token_ids=[9, 9, 9], tree_depth=2)
    coordinator.on_worker(b"v", forged)
    assert request.committed == PROMPT
    assert coordinator.metrics.num_stale_dropped == 1
    coordinator.on_worker(b"unknown", forged)  # a worker that never said hello
    assert coordinator.metrics.num_malformed_dropped == 1

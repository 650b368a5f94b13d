"""The coordinator core in-process: stale, duplicate and out-of-order worker messages are dropped."""

from __future__ import annotations

import random

import pytest

from protocol.codec import decode, encode
from protocol.messages import Blob, Chunk, Committed, Draft, Generate, Message
from protocol.params import TreeConfig
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
    coordinator.on_worker(b"unknown", forged)  # a worker that never said hello (or was dropped): stale
    assert coordinator.metrics.num_stale_dropped == 2 and request.committed == PROMPT


def bad_draft(request_id: str, epoch: int, root: int) -> Draft:
    """A draft whose one node names itself as its parent (a parent must come before its child)."""
    return Draft(request_id, epoch, root, Blob("int64", (1,), (5).to_bytes(8, "little")),
                 Blob("int64", (1,), (0).to_bytes(8, "little")), Blob("float32", (1,), bytes(4)))


class Harness:
    """Delivers the coordinator's messages to in-process workers, with a clock the test moves."""

    @staticmethod
    def start(mode: str, max_new_tokens: int = 60) -> Harness:
        """Verifier + model drafter (the target itself), request r1 running until 10 tokens are out."""
        target = tiny_model("llama", seed=11)
        config = TandemConfig.from_dict({"verifier": {"model": "unused"}, "drafter": {"kind": "ngram"},
                                         "speculation": {"mode": mode}, "coordinator": {"worker_timeout_s": 2.0}})
        now = [0.0]
        coordinator = Coordinator(config, None, {"vocab_size": 96, "hidden_size": 64}, frozenset({2}),
                                  lambda: now[0])
        handlers: dict[bytes, object] = {
            b"v": VerifierWorker(TargetVerifier(target), "v"),
            b"d": DrafterWorker(ModelDrafter(target), config.speculation.tree, mode, "d")}
        harness = Harness(coordinator, handlers, now)
        for identity, handler in handlers.items():
            coordinator.on_worker(identity, handler.hello())  # type: ignore[attr-defined]
        coordinator.on_client(b"client", Generate("r1", prompt_ids=PROMPT, max_new_tokens=max_new_tokens))
        while len(harness.tokens) < 10:
            harness.step()
        return harness

    def kill(self, identity: bytes, survivor: bytes) -> None:
        """`identity` stops answering; the clock passes its timeout while `survivor` keeps beating."""
        from protocol.messages import Heartbeat

        del self.handlers[identity]
        self.now[0] += 3.0
        self.coordinator.on_worker(survivor, Heartbeat(survivor.decode()))
        self.coordinator.tick()
        self.step()

    def join(self, identity: bytes, handler: object) -> None:
        self.handlers[identity] = handler
        self.coordinator.on_worker(identity, handler.hello())  # type: ignore[attr-defined]
        for _ in range(400):
            if self.finished:
                return
            self.step()

    def __init__(self, coordinator: Coordinator, handlers: dict[bytes, object], now: list[float]) -> None:
        self.coordinator, self.handlers, self.now = coordinator, handlers, now
        self.tokens: list[int] = []
        self.finished = False
        self.sent: list[tuple[bytes, Message]] = []

    def step(self) -> None:
        outbox, self.coordinator.outbox = self.coordinator.outbox, []
        for identity, message, to_client in outbox:
            if to_client:
                if isinstance(message, Chunk):
                    self.tokens += message.token_ids
                    self.finished = self.finished or message.finish_reason is not None
                continue
            self.sent.append((identity, message))
            handler = self.handlers.get(identity)
            if handler is not None:
                for reply in handler.handle(wire(message)):  # type: ignore[attr-defined]
                    self.coordinator.on_worker(identity, wire(reply))
        if not self.coordinator.outbox:
            for identity, handler in self.handlers.items():
                for reply in handler.step():  # type: ignore[attr-defined]
                    self.coordinator.on_worker(identity, wire(reply))


def test_a_falcon_drafter_joining_mid_request_gets_the_features() -> None:
    from protocol.messages import Open, Steer
    from workers.drafters.falcon import FalconDrafter
    from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel

    harness = Harness.start("async")
    harness.kill(b"d", survivor=b"v")
    assert harness.coordinator.requests["r1"].drafter is None  # verifier-only meanwhile
    target = tiny_model("llama", seed=11)
    falcon = FalconDrafter(FalconDrafterModel(FalconConfig.from_target_config(target.config),
                                              target.get_input_embeddings().weight.detach(),
                                              target.get_output_embeddings().weight.detach()))
    tree = harness.coordinator.tree
    harness.join(b"d2", DrafterWorker(falcon, tree, "async", "d2", vocab_size=96, hidden_size=64))
    assert harness.finished and harness.tokens == hf_greedy(target, PROMPT, 60)
    steers = [m for i, m in harness.sent if i == b"v" and isinstance(m, Steer)]
    opens = [m for i, m in harness.sent if i == b"d2" and isinstance(m, Open)]
    assert steers[0].mode == "async" and not steers[0].want_features  # drafter lost: the verifier goes on alone
    assert any(s.send_features and s.want_features and s.mode == "async" for s in steers)  # d2 takes over
    assert opens and opens[0].features is not None and opens[0].features.shape[0] == opens[0].epoch - 1
    assert harness.handlers[b"d2"].stats()["num_drafts_sent"] > 0  # type: ignore[attr-defined]  # it drafted for r1


def test_a_new_verifier_resyncs_a_request_whose_verifier_died() -> None:
    from protocol.messages import Prefill

    harness = Harness.start("sync")
    harness.kill(b"v", survivor=b"d")
    assert not harness.finished and harness.coordinator.requests["r1"].verifier is None
    harness.join(b"v2", VerifierWorker(TargetVerifier(tiny_model("llama", seed=11)), "v2"))
    assert harness.finished and harness.tokens == hf_greedy(tiny_model("llama", seed=11), PROMPT, 60)
    assert any(i == b"v2" and isinstance(m, Prefill) and not m.sample_next for i, m in harness.sent)


def test_a_malformed_draft_counts_as_malformed_whatever_its_requests_state() -> None:
    """Whether a bad tree arrives while its request runs or after the request finished (a race on a real
    socket), it is counted malformed; only the running request's drafter is unlinked for it."""
    harness = Harness.start("async")
    coordinator = harness.coordinator
    request = coordinator.requests["r1"]
    assert request.drafter == b"d"
    before = (coordinator.metrics.num_malformed_dropped, coordinator.metrics.num_stale_dropped)
    coordinator.on_worker(b"d", wire(bad_draft("gone", 3, 7)))  # no such request (finished, or never was)
    assert (coordinator.metrics.num_malformed_dropped, coordinator.metrics.num_stale_dropped) == \
        (before[0] + 1, before[1])
    assert request.drafter == b"d"
    coordinator.on_worker(b"d", wire(bad_draft("r1", request.epoch, request.committed[-1])))  # its running request
    assert (coordinator.metrics.num_malformed_dropped, coordinator.metrics.num_stale_dropped) == \
        (before[0] + 2, before[1])
    assert request.drafter is None  # unlinked: the request goes on without that drafter
    good = Draft("r1", request.epoch, request.committed[-1], Blob("int64", (1,), (5).to_bytes(8, "little")),
                 Blob("int64", (1,), (-1).to_bytes(8, "little", signed=True)), Blob("float32", (1,), bytes(4)))
    coordinator.on_worker(b"d", wire(good))  # well formed, from a drafter the request no longer has: stale
    assert (coordinator.metrics.num_malformed_dropped, coordinator.metrics.num_stale_dropped) == \
        (before[0] + 2, before[1] + 1)
    harness.join(b"d2", DrafterWorker(ModelDrafter(tiny_model("llama", seed=11)), TreeConfig(), "async", "d2"))
    assert harness.finished and harness.tokens == hf_greedy(tiny_model("llama", seed=11), PROMPT, 60)

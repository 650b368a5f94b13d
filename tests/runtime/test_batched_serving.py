"""Many requests at once through the real coordinator and workers (in-process, over the codec): the verifier
verifies every running request in one forward and the drafter grows every tree in one step, and each
request's output is still exactly its own unbatched greedy `generate` (or, sampled with a seed, its own
draw whatever else runs beside it)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from protocol.codec import decode, encode
from protocol.messages import Cancel, Chunk, Error, Generate, Message
from runtime.config import TandemConfig
from runtime.coordinator import Coordinator
from tests.models import hf_greedy, tiny_model
from workers.drafter_worker import DrafterWorker
from workers.drafters.falcon import FalconDrafter
from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel
from workers.drafters.model import ModelDrafter
from workers.target import TargetVerifier
from workers.verifier_worker import VerifierWorker

MAX_NEW = 24


def prompt(length: int, seed: int) -> list[int]:
    base = torch.randint(3, 96, (max(length // 3, 1),), generator=torch.Generator().manual_seed(seed)).tolist()
    return (base * 4)[:length]


PROMPTS = {f"r{i}": prompt(length, i) for i, length in enumerate([1, 6, 45, 13, 90, 7])}


def wire(message: Message) -> Message:
    return decode(encode(message))


def drafter_of(kind: str, target: Any) -> Any:
    if kind == "model":  # the target itself: deep trees, accepted
        return ModelDrafter(target)
    torch.manual_seed(2)  # an untrained Falcon drafter: trees of every shape, mostly rejected
    return FalconDrafter(FalconDrafterModel(FalconConfig.from_target_config(target.config),
                                            target.get_input_embeddings().weight.detach(),
                                            target.get_output_embeddings().weight.detach()))


class Serving:
    """Coordinator + verifier + drafter in one process; clients join and leave between steps."""

    def __init__(self, mode: str, kind: str, disable_at: int = 0) -> None:
        self.target = tiny_model("llama", seed=11)
        config = TandemConfig.from_dict({"verifier": {"model": "unused"}, "drafter": {"kind": "ngram"},
                                         "speculation": {"mode": mode, "tree": {"total_tokens": 12, "depth": 5,
                                                                                 "top_k": 3}}})
        self.coordinator = Coordinator(config, None, {"vocab_size": 96, "hidden_size": 64}, frozenset({2}))
        self.verifier = VerifierWorker(TargetVerifier(self.target), "v", max_running=8, prefill_chunk=32,
                                       disable_at=disable_at)
        self.drafter = DrafterWorker(drafter_of(kind, self.target), config.speculation.tree, mode, "d",
                                     vocab_size=96, hidden_size=64, disable_at=disable_at)
        drafter = self.drafter
        self.handlers: dict[bytes, Any] = {b"v": self.verifier, b"d": drafter}
        for identity, handler in self.handlers.items():
            self.coordinator.on_worker(identity, handler.hello())
        self.tokens: dict[str, list[int]] = {}
        self.finish: dict[str, str] = {}
        self.max_rows = 0

    def submit(self, request_id: str, ids: list[int], **sampling: Any) -> None:
        self.tokens[request_id] = []
        self.coordinator.on_client(b"client", Generate(request_id, prompt_ids=ids, max_new_tokens=MAX_NEW,
                                                       ignore_eos=True, **sampling))

    def cancel(self, request_id: str) -> None:
        self.coordinator.on_client(b"client", Cancel(request_id))

    def step(self) -> None:
        while self.coordinator.outbox:
            outbox, self.coordinator.outbox = self.coordinator.outbox, []
            for identity, message, to_client in outbox:
                if to_client:
                    if isinstance(message, Error) and message.request_id:
                        self.finish[message.request_id] = f"error:{message.code}"
                    if isinstance(message, Chunk):
                        self.tokens[message.request_id] += message.token_ids
                        if message.finish_reason is not None:
                            self.finish[message.request_id] = message.finish_reason
                    continue
                for reply in self.handlers[identity].handle(wire(message)):
                    self.coordinator.on_worker(identity, wire(reply))
        runnable = sum(r.is_runnable for r in self.verifier.requests.values())
        self.max_rows = max(self.max_rows, min(runnable, self.verifier.max_batch))
        for identity, handler in self.handlers.items():
            if handler.has_work():
                for reply in handler.step():
                    self.coordinator.on_worker(identity, wire(reply))

    def run(self, until: Any, limit: int = 2000) -> None:
        for _ in range(limit):
            if until():
                return
            self.step()
        raise AssertionError(f"not done after {limit} steps: finished {sorted(self.finish)}")


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("kind", ["model", "falcon"])
def test_requests_joining_and_leaving_mid_batch_each_equal_their_own_generate(mode: str, kind: str) -> None:
    serving = Serving(mode, kind)
    ids = list(PROMPTS)
    for request_id in ids[:3]:
        serving.submit(request_id, PROMPTS[request_id])
    serving.run(lambda: sum(len(serving.tokens[r]) for r in ids[:3]) >= 12)  # the first ones are running
    serving.submit("cancelled", prompt(30, 99))
    for request_id in ids[3:]:  # more join while the first ones run
        serving.submit(request_id, PROMPTS[request_id])
    serving.run(lambda: len(serving.tokens["cancelled"]) > 0)
    serving.cancel("cancelled")  # leaves mid-batch
    serving.run(lambda: all(r in serving.finish for r in ids))
    for request_id in ids:
        assert serving.tokens[request_id] == hf_greedy(serving.target, PROMPTS[request_id], MAX_NEW), request_id
        assert serving.finish[request_id] == "length"
    assert len(serving.tokens["cancelled"]) < MAX_NEW and serving.finish["cancelled"] == "cancelled"
    assert serving.max_rows >= 3  # the requests really shared forwards
    assert serving.verifier.counters["num_batches"] < serving.verifier.counters["num_verifications"]
    serving.run(lambda: not serving.verifier.requests)  # every slot is back
    assert serving.verifier.cache.num_free == 8


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_seeded_sampled_request_draws_the_same_tokens_whatever_else_is_in_the_batch(mode: str) -> None:
    sampling = {"temperature": 0.9, "top_p": 0.95, "seed": 1234}
    alone = Serving(mode, "model")
    alone.submit("s", PROMPTS["r2"], **sampling)
    alone.run(lambda: "s" in alone.finish)
    crowded = Serving(mode, "model")
    for request_id in ("r0", "r1", "r4"):
        crowded.submit(request_id, PROMPTS[request_id], temperature=0.7, seed=7)
    crowded.run(lambda: sum(map(len, crowded.tokens.values())) >= 6)
    crowded.submit("s", PROMPTS["r2"], **sampling)
    crowded.run(lambda: len(crowded.finish) == 4)
    assert crowded.max_rows >= 2
    assert len(alone.tokens["s"]) == MAX_NEW and crowded.tokens["s"] == alone.tokens["s"]


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_speculation_steps_aside_under_load_and_returns_and_every_output_stays_exact(mode: str) -> None:
    """With `disable_at` 3: three or more requests verify root-only and the drafter idles (sync requests
    wait for no draft); at one request speculation is back; every output is its own greedy `generate`."""
    serving = Serving(mode, "model", disable_at=3)
    crowd = ["r1", "r2", "r3", "r5"]
    for request_id in crowd:
        serving.submit(request_id, PROMPTS[request_id])
    paused_nodes, drafts_while_shut = [], 0
    for _ in range(2000):
        if all(r in serving.finish for r in crowd):
            break
        nodes, drafts = serving.verifier.counters["num_nodes_verified"], serving.drafter.counters["num_drafts_sent"]
        serving.step()
        if serving.verifier.gate.is_shut and len(serving.verifier.requests) >= 3:
            paused_nodes.append(serving.verifier.counters["num_nodes_verified"] - nodes)
        if serving.drafter.gate.is_shut:  # its own count (it opens a request after the prefill) shut it
            drafts_while_shut += serving.drafter.counters["num_drafts_sent"] - drafts
    assert all(r in serving.finish for r in crowd), serving.finish
    assert paused_nodes and not any(paused_nodes)  # steps while paused verified no node
    assert serving.verifier.counters["num_paused_batches"] > 0 and serving.verifier.gate.num_shut == 1
    assert serving.drafter.gate.num_shut == 1 and drafts_while_shut == 0
    serving.run(lambda: not serving.verifier.requests and not serving.drafter.requests)
    assert not serving.verifier.gate.is_shut and not serving.drafter.gate.is_shut
    paused_batches, nodes = (serving.verifier.counters[k] for k in ("num_paused_batches", "num_nodes_verified"))
    serving.submit("alone", PROMPTS["r4"])
    serving.run(lambda: "alone" in serving.finish)
    assert serving.verifier.counters["num_paused_batches"] == paused_batches  # one request: speculating again
    assert serving.verifier.counters["num_nodes_verified"] > nodes
    for request_id, ids in [*((r, PROMPTS[r]) for r in crowd), ("alone", PROMPTS["r4"])]:
        assert serving.tokens[request_id] == hf_greedy(serving.target, ids, MAX_NEW), request_id
        assert serving.finish[request_id] == "length"


def test_a_seeded_sampled_request_draws_the_same_tokens_with_speculation_paused() -> None:
    sampling = {"temperature": 0.9, "top_p": 0.95, "seed": 1234}
    alone = Serving("async", "model")
    alone.submit("s", PROMPTS["r2"], **sampling)
    alone.run(lambda: "s" in alone.finish)
    crowded = Serving("async", "model", disable_at=2)
    crowded.submit("r0", PROMPTS["r0"], temperature=0.7, seed=7)
    crowded.submit("s", PROMPTS["r2"], **sampling)
    crowded.run(lambda: len(crowded.finish) == 2)
    assert crowded.verifier.counters["num_paused_batches"] > 0
    assert alone.verifier.counters["num_nodes_verified"] > 0  # alone it verified trees
    assert len(alone.tokens["s"]) == MAX_NEW and crowded.tokens["s"] == alone.tokens["s"]


def test_a_failing_forward_fails_its_request_and_the_batch_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    serving = Serving("async", "model")
    poisoned = 77  # a token id in this prompt only: a forward holding it raises, like a kernel fault would
    for request_id in ("r1", "r3"):
        serving.submit(request_id, PROMPTS[request_id])
    serving.submit("bad", [poisoned, *prompt(10, 5)])
    original = serving.verifier.target.forward_rows

    def forward_rows(cache: Any, slots: Any, starts: Any, rows: Any) -> torch.Tensor:
        if len(serving.tokens["bad"]) and any(slot == serving.verifier.requests["bad"].slot for slot in slots
                                              if "bad" in serving.verifier.requests):
            raise RuntimeError("injected fault")
        return original(cache, slots, starts, rows)

    serving.run(lambda: len(serving.tokens["bad"]) > 0)  # prefilled and sampled its first token
    monkeypatch.setattr(serving.verifier.target, "forward_rows", forward_rows)
    serving.run(lambda: all(r in serving.finish for r in ("r1", "r3", "bad")))
    assert serving.finish["bad"] == "error:internal"
    for request_id in ("r1", "r3"):
        assert serving.tokens[request_id] == hf_greedy(serving.target, PROMPTS[request_id], MAX_NEW)
    assert serving.verifier.counters["num_failed"] == 1


def test_a_message_that_breaks_the_verifier_fails_one_request_and_it_keeps_serving(
        monkeypatch: pytest.MonkeyPatch) -> None:
    serving = Serving("async", "model")
    serving.submit("r1", PROMPTS["r1"])
    serving.run(lambda: len(serving.tokens["r1"]) > 0)

    def broken(message: Any) -> Any:
        raise KeyError("injected")

    monkeypatch.setattr(serving.verifier, "_prefill", broken)
    serving.submit("bad", PROMPTS["r3"])
    serving.run(lambda: "bad" in serving.finish)
    monkeypatch.undo()
    serving.submit("r4", PROMPTS["r4"])
    serving.run(lambda: all(r in serving.finish for r in ("r1", "r4")))
    assert serving.finish["bad"] == "error:internal"
    for request_id in ("r1", "r4"):
        assert serving.tokens[request_id] == hf_greedy(serving.target, PROMPTS[request_id], MAX_NEW)

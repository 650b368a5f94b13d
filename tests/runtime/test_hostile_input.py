"""Hostile input on both coordinator sockets while real requests run: every frame is counted and
dropped (or refused), no process crashes, and the real requests' outputs do not change.

Workers bind no socket (they connect to the coordinator), so the coordinator's two sockets are the
whole attack surface of a deployment; a worker's own decoding of bad frames is covered in-process.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import zmq

from protocol.codec import decode, encode
from protocol.handshake import UNKNOWN_WORKER
from protocol.messages import (
    PROTOCOL_VERSION,
    Blob,
    Cancel,
    Committed,
    Draft,
    Failed,
    Generate,
    GetMetrics,
    Heartbeat,
    Hello,
    Message,
    Metrics,
    Open,
    Refused,
    Welcome,
)
from runtime.client import Client
from runtime.launch import Deployment
from tests.models import hf_greedy, tiny_model
from tests.runtime.deploy import write_config
from tests.runtime.fuzz import hostile_frames, num_malformed

PROMPTS = [[7, 8, 9, 10, 11, 12], [40, 41, 42, 40, 41, 42, 40], [5, 6, 7, 8, 9, 10]]
MAX_NEW = 60
MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "target"
    tiny_model("llama", seed=11).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reference() -> list[list[int]]:
    model = tiny_model("llama", seed=11)
    return [hf_greedy(model, p, MAX_NEW) for p in PROMPTS]


@pytest.fixture(scope="module")
def deployment(target: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    config = write_config(tmp_path_factory.mktemp("hostile") / "t.yaml", target, "async", {"kind": "ngram"},
                          max_message_bytes=MAX_MESSAGE_BYTES)
    with Deployment(str(config)) as running:
        running.start(timeout_s=120)
        yield running


def while_requests_run(deployment: Deployment, reference: list[list[int]], attack: Callable[[], None]) -> None:
    """Run `attack` while three clients generate, twice over; their outputs must equal the reference."""
    address = deployment.config.coordinator.client_address
    started = threading.Event()

    def generate(index: int) -> list[list[int]]:
        with Client(address, timeout_s=60) as client:
            outputs = []
            for _ in range(2):
                started.set()
                outputs.append(client.generate(PROMPTS[index], max_new_tokens=MAX_NEW).token_ids)
            return outputs

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        futures = [pool.submit(generate, i) for i in range(len(PROMPTS))]
        started.wait(30)
        attack()
        results = [f.result(timeout=120) for f in futures]
    assert results == [[want, want] for want in reference]
    assert all(p.poll() is None for p in deployment.processes.values())  # nothing crashed


def metrics(deployment: Deployment) -> dict[str, Any]:
    with Client(deployment.config.coordinator.client_address, timeout_s=30) as client:
        return client.metrics()


class Rogue:
    """A raw DEALER socket on one of the coordinator's addresses."""

    def __init__(self, context: zmq.Context[Any], address: str, identity: bytes | None = None) -> None:
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if identity is not None:
            self.socket.setsockopt(zmq.IDENTITY, identity)
        self.socket.connect(address)

    def send(self, message: Message | list[bytes]) -> None:
        self.socket.send_multipart(encode(message) if isinstance(message, Message) else message)

    def receive(self, kind: type[Message], timeout_s: float = 30.0, match: Callable[[Any], bool] = bool) -> Any:
        """The next message of this kind (others are skipped); fails the test after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.socket.poll(int(max(deadline - time.monotonic(), 0) * 1000)):
            message = decode(self.socket.recv_multipart())
            if isinstance(message, kind) and match(message):
                return message
        raise AssertionError(f"no {kind.TYPE} within {timeout_s} s")


def test_client_socket_fuzz(deployment: Deployment, reference: list[list[int]]) -> None:
    rng = random.Random(9)
    seeds: list[Message] = [Generate("g", prompt_ids=[5, 6, 7], max_new_tokens=4), Cancel("c"), GetMetrics("m")]
    frames = hostile_frames(seeds, rng, 200, MAX_MESSAGE_BYTES)
    before = metrics(deployment)
    context = zmq.Context()

    def attack() -> None:
        rogue = Rogue(context, deployment.config.coordinator.client_address)
        for message in frames:
            rogue.send(message)
        rogue.send(Cancel(uuid.uuid4().hex))  # unknown request id: nothing happens
        rogue.send(Committed("x", 3, [1], 0))  # a worker's message on the client socket: an error reply
        rogue.send(GetMetrics("barrier"))  # answered after everything before it was handled
        rogue.receive(Metrics, match=lambda m: m.request_id == "barrier")
        rogue.socket.close()

    while_requests_run(deployment, reference, attack)
    context.term()
    after = metrics(deployment)
    assert after["num_malformed_dropped"] - before["num_malformed_dropped"] == num_malformed(frames, MAX_MESSAGE_BYTES)
    assert after["num_errors"] == before["num_errors"]


def test_worker_socket_fuzz(deployment: Deployment, reference: list[list[int]]) -> None:
    rng = random.Random(10)
    draft = Draft("r", 3, 1, Blob("int64", (1,), bytes(8)), Blob("int64", (1,), bytes(8)),
                  Blob("float32", (1,), bytes(4)))
    seeds: list[Message] = [Heartbeat("w", {"num_requests": 0}), Committed("r", 3, [1, 2], 1,
                                                                            Blob("float32", (2, 4), bytes(32))),
                            draft, Failed("r", "x", "y")]
    frames = hostile_frames(seeds, rng, 200, MAX_MESSAGE_BYTES)
    address = deployment.config.coordinator.worker_address
    before = metrics(deployment)
    context = zmq.Context()
    counts = {"stale": 0, "malformed": 0}

    def attack() -> None:
        counts["stale"] += hostile_drafter(context, deployment, reference)
        counts["malformed"] += 1
        garbage = Rogue(context, address)
        for message in frames:
            garbage.send(message)
        for stale in (Committed("r", 3, [1], 0), draft, Failed("r", "internal", "x"), Heartbeat("garbage")):
            garbage.send(stale)  # from a worker that never said Hello: stale, and told to say Hello
        counts["stale"] += 4
        garbage.receive(Refused, match=lambda m: m.reason == UNKNOWN_WORKER)
        old_version = Rogue(context, address)
        old_version.send(Hello("old", "verifier", PROTOCOL_VERSION + 1, "cpu", {}))
        assert "protocol version" in old_version.receive(Refused).reason
        thief = Rogue(context, address)
        thief.send(Hello("verifier-0", "verifier", PROTOCOL_VERSION, "cpu", {}))  # another peer's id
        assert "taken" in thief.receive(Refused).reason
        twin = Rogue(context, address, identity=b"verifier-0")  # ZeroMQ ignores a second peer with a live identity
        twin.send(Committed("r", 3, [1], 0))
        for rogue in (garbage, old_version, thief, twin):
            rogue.socket.close()

    while_requests_run(deployment, reference, attack)
    context.term()
    after = metrics(deployment)
    assert after["num_malformed_dropped"] - before["num_malformed_dropped"] == \
        num_malformed(frames, MAX_MESSAGE_BYTES) + counts["malformed"]
    assert after["num_stale_dropped"] - before["num_stale_dropped"] >= counts["stale"]
    assert after["num_workers_refused"] - before["num_workers_refused"] == 2
    assert after["num_errors"] == before["num_errors"]


def hostile_drafter(context: zmq.Context[Any], deployment: Deployment, reference: list[list[int]]) -> int:
    """A peer that joins as a drafter, takes a real request, and answers with stale, foreign and malformed
    messages; then goes silent until the coordinator drops it. Returns how many stale messages it sent."""
    rogue = Rogue(context, deployment.config.coordinator.worker_address)
    rogue.send(Hello("rogue-drafter", "drafter", PROTOCOL_VERSION, "cpu", {}))
    rogue.receive(Welcome)
    def generate() -> list[int]:
        with Client(deployment.config.coordinator.client_address, timeout_s=60) as client:
            return client.generate(PROMPTS[0], max_new_tokens=MAX_NEW).token_ids

    with ThreadPoolExecutor(2) as pool:  # two new requests: the least loaded drafter (the rogue) gets one
        extra = [pool.submit(generate) for _ in range(2)]
        stale = answer_with_stale_and_malformed(rogue, rogue.receive(Open))
        assert [f.result(timeout=120) for f in extra] == [reference[0]] * 2
    return stale


def answer_with_stale_and_malformed(rogue: Rogue, opened: Open) -> int:
    rid, epoch, root = opened.request_id, opened.epoch, opened.committed_ids[-1]

    def tree(parents: list[int]) -> tuple[Blob, Blob, Blob]:
        n = len(parents)
        return (Blob("int64", (n,), b"".join((5).to_bytes(8, "little", signed=True) for _ in parents)),
                Blob("int64", (n,), b"".join(p.to_bytes(8, "little", signed=True) for p in parents)),
                Blob("float32", (n,), bytes(4 * n)))

    stale = [Draft(rid, epoch - 1, root, *tree([-1])), Draft(rid, epoch + 5, root, *tree([-1])),  # wrong epochs
             Draft(uuid.uuid4().hex, epoch, root, *tree([-1])),  # unknown request
             Committed(rid, epoch, [5, 5, 5], 2)]  # a verifier's message: not this worker's to send
    for message in stale:
        rogue.send(message)
    rogue.send(Draft(rid, epoch, root, *tree([1, -1])))  # the current epoch, a parent after its child: malformed
    rogue.send(Draft(rid, epoch, root, *tree([-1])))  # a duplicate after that: stale (the request moved on)
    rogue.socket.close()  # silent from here: dropped after worker_timeout_s
    return len(stale) + 1

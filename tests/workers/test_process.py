"""A worker process against a fake coordinator (a ROUTER in the test): garbage is dropped, and a
coordinator that no longer knows the worker gets a new Hello, empty state and no stale replies."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from protocol.codec import decode, encode
from protocol.handshake import UNKNOWN_WORKER
from protocol.messages import (
    PROTOCOL_VERSION,
    Cancel,
    Committed,
    Heartbeat,
    Hello,
    Message,
    Prefill,
    Refused,
    Release,
    Shutdown,
    Welcome,
)
from runtime.launch import free_port
from tests.runtime.fuzz import hostile_frames
from workers.process import WorkerProcess


class EchoHandler:
    """Answers a Prefill with an empty Committed after `delay_s` (a slow forward); keeps one entry per request."""

    worker_id = "echo-0"

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.delay_s = 0.0

    def hello(self) -> Hello:
        return Hello(self.worker_id, "verifier", PROTOCOL_VERSION, "cpu", {})

    def stats(self) -> dict[str, Any]:
        return {"num_requests": len(self.requests)}

    def handle(self, message: Message) -> list[Message]:
        if isinstance(message, Prefill):
            time.sleep(self.delay_s)
            self.requests[message.request_id] = message.epoch
            return [Committed(message.request_id, message.epoch, [], 0)]
        if isinstance(message, Release):
            self.requests.pop(message.request_id, None)
        return []

    def has_work(self) -> bool:
        return False

    def step(self) -> list[Message]:
        return []


class FakeCoordinator:
    def __init__(self) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(self.address)

    def send(self, message: Message | list[bytes]) -> None:
        frames = encode(message) if isinstance(message, Message) else message
        self.socket.send_multipart([b"echo-0", *frames])

    def receive(self, kind: type[Message], timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while self.socket.poll(int(max(deadline - time.monotonic(), 0) * 1000)):
            message = decode(self.socket.recv_multipart()[1:])
            if isinstance(message, kind):
                return message
        raise AssertionError(f"no {kind.TYPE} within {timeout_s} s")

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def running() -> Iterator[tuple[FakeCoordinator, EchoHandler, WorkerProcess]]:
    coordinator, handler = FakeCoordinator(), EchoHandler()
    worker = WorkerProcess(handler, coordinator.address, heartbeat_interval_s=0.1)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
    thread.start()
    coordinator.receive(Hello)
    coordinator.send(Welcome("echo-0", "off"))
    yield coordinator, handler, worker
    coordinator.send(Shutdown("test over"))
    thread.join(timeout=10)
    coordinator.close()
    assert result == [0]  # it served to the end: nothing crashed it


def prefill(request_id: str) -> Prefill:
    return Prefill(request_id, 3, [1, 2, 3], {})


def test_garbage_from_the_coordinator_is_dropped(running: tuple[FakeCoordinator, EchoHandler, WorkerProcess]) -> None:
    coordinator, _, worker = running
    for frames in hostile_frames([prefill("p"), Release("p"), Cancel("c")], random.Random(4), 100, 1 << 20):
        coordinator.send(frames)
    coordinator.send(prefill("after"))
    while coordinator.receive(Committed).request_id != "after":  # damaged copies may still be valid Prefills
        pass
    assert worker.handshake.is_joined


def test_unknown_worker_says_hello_again_with_empty_state(
        running: tuple[FakeCoordinator, EchoHandler, WorkerProcess]) -> None:
    coordinator, handler, worker = running
    coordinator.send(prefill("old"))
    assert coordinator.receive(Committed).request_id == "old" and "old" in handler.requests
    handler.delay_s = 0.5
    coordinator.send(prefill("in-flight"))  # its answer would reach a coordinator that forgot the worker
    coordinator.send(Refused("echo-0", UNKNOWN_WORKER))
    hello = coordinator.receive(Hello)
    assert hello.worker_id == "echo-0"
    coordinator.send(Welcome("echo-0", "off"))
    handler.delay_s = 0.0
    coordinator.send(prefill("new"))
    assert coordinator.receive(Committed).request_id == "new"  # "in-flight" was never sent
    assert worker.num_stale_replies_dropped == 1
    assert set(handler.requests) == {"new"}
    assert coordinator.receive(Heartbeat).stats == {"num_requests": 1}

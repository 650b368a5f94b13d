"""Load: many concurrent clients with mixed sampling, stop rules, cancellations and clients that vanish
mid-stream. Nothing is lost or changed, the queue bound answers `overloaded`, and afterwards every
worker is empty and every process's memory is back near its baseline."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import zmq
import zmq.asyncio

from protocol.codec import decode, encode
from protocol.errors import OverloadedError, TandemError
from protocol.messages import Chunk, Generate
from runtime.client import AsyncClient, Client
from runtime.launch import Deployment
from tests.models import tiny_model
from tests.runtime.deploy import write_config

KINDS: list[dict[str, Any]] = [  # (prompt, parameters): every client runs one of these
    {"prompt_or_ids": [7, 8, 9, 10, 11, 12], "max_new_tokens": 24},
    {"prompt_or_ids": [40, 41, 42, 40, 41, 42, 40], "max_new_tokens": 16, "ignore_eos": True},
    {"prompt_or_ids": [5, 6, 7, 8], "max_new_tokens": 20, "temperature": 0.8, "top_p": 0.9, "seed": 3},
    {"prompt_or_ids": [20, 21, 22, 23], "max_new_tokens": 20, "temperature": 1.2, "top_k": 5, "seed": 4},
    {"prompt_or_ids": [9, 9, 9, 9, 9], "max_new_tokens": 24, "stop_token_ids": [9, 10, 11]},
]
QUEUE_BOUND = 16
MAX_RUNNING = 8  # 8 running + 16 queued << 64 clients arriving at once: the bound must answer, however fast
MAX_RSS_GROWTH_BYTES = 200 * 2**20


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("load")
    tiny_model("llama", seed=11).save_pretrained(root / "target")
    config = write_config(root / "t.yaml", root / "target", "async", {"kind": "ngram"},
                          max_queued_requests=QUEUE_BOUND, max_running_per_verifier=MAX_RUNNING)
    with Deployment(str(config)) as running:
        running.start(timeout_s=120)
        yield running


def rss(deployment: Deployment) -> dict[str, int]:
    return {name: psutil.Process(p.pid).memory_info().rss for name, p in deployment.processes.items()}


async def one_client(address: str, index: int, reference: list[list[int]], tally: dict[str, int]) -> None:
    """Client `index` runs kind index % len(KINDS); some cancel mid-stream, some vanish without Cancel."""
    kind, behaviour = index % len(KINDS), ("complete", "complete", "cancel", "vanish")[index // len(KINDS) % 4]
    while True:
        try:
            if behaviour == "vanish":
                await vanish(address, KINDS[kind])
            else:
                async with AsyncClient(address, timeout_s=120) as client:
                    tokens: list[int] = []
                    async for chunk in client.stream(**KINDS[kind]):
                        tokens += chunk.token_ids
                        if behaviour == "cancel" and len(tokens) >= 4:
                            break  # leaving the stream sends Cancel
                    want = reference[kind][:len(tokens)] if behaviour == "cancel" else reference[kind]
                    tally["mismatched"] += tokens != want
            tally[behaviour] += 1
            return
        except TandemError as err:
            if not isinstance(err, OverloadedError) and "overloaded" not in str(err):  # vanish() reports the code
                raise
            tally["overloaded"] += 1
            await asyncio.sleep(0.2)


async def vanish(address: str, kind: dict[str, Any]) -> None:
    """A client that reads one chunk and closes its socket: no Cancel, no goodbye."""
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address)
    fields = dict(kind)
    ids = fields.pop("prompt_or_ids")
    await socket.send_multipart(encode(Generate(uuid.uuid4().hex, prompt_ids=ids, **fields)))
    reply = decode(await asyncio.wait_for(socket.recv_multipart(), 120))
    socket.close()
    context.term()
    if not isinstance(reply, Chunk):
        raise TandemError(f"{getattr(reply, 'code', '?')}: {getattr(reply, 'message', reply)}")


def run_load(deployment: Deployment, num_clients: int) -> None:
    address = deployment.config.coordinator.client_address
    with Client(address, timeout_s=120) as client:  # undisturbed, one at a time: the reference
        reference = [client.generate(**kind).token_ids for kind in KINDS]
    baseline = rss(deployment)
    tally = dict.fromkeys(("complete", "cancel", "vanish", "overloaded", "mismatched"), 0)

    async def everyone() -> None:
        await asyncio.gather(*(one_client(address, i, reference, tally) for i in range(num_clients)))

    asyncio.run(everyone())
    assert tally["mismatched"] == 0
    assert tally["complete"] + tally["cancel"] + tally["vanish"] == num_clients  # none lost
    assert tally["overloaded"] > 0  # the bound answered instead of queueing without end
    metrics = settled(address)
    assert metrics["num_active"] == 0 and metrics["num_queued"] == 0
    assert [w["num_requests"] for w in metrics["workers"]] == [0, 0]
    assert [w["worker_num_requests"] for w in metrics["workers"]] == [0, 0]  # the workers' own count
    slots = deployment.config.limits.max_running_per_verifier
    assert [w["free_slots"] for w in metrics["workers"] if w["role"] == "verifier"] == [slots]  # every slot back
    after = rss(deployment)
    assert {name: after[name] - baseline[name] < MAX_RSS_GROWTH_BYTES for name in after} == dict.fromkeys(after, True)
    with Client(address, timeout_s=60) as client:
        assert client.generate(**KINDS[0]).token_ids == reference[0]


def settled(address: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Metrics once no request is left anywhere (vanished clients' requests are cancelled on the next chunk,
    workers report their own count in heartbeats); the last metrics if that never happens."""
    deadline = time.monotonic() + timeout_s
    with Client(address, timeout_s=30) as client:
        while True:
            metrics = client.metrics()
            empty = metrics["num_active"] == metrics["num_queued"] == 0 and all(
                w["num_requests"] == w["worker_num_requests"] == 0 for w in metrics["workers"])
            if empty or time.monotonic() > deadline:
                return metrics
            time.sleep(0.2)


def test_64_clients(deployment: Deployment) -> None:
    run_load(deployment, 64)


@pytest.mark.slow
def test_256_clients(deployment: Deployment) -> None:
    run_load(deployment, 256)



"""AsyncClient without a coordinator: a cancelled caller stays cancelled."""

from __future__ import annotations

import asyncio

import pytest

from protocol.errors import WorkerDeadError
from protocol.messages import Chunk, Message
from runtime.client import AsyncClient


async def test_a_wait_cancelled_as_its_chunk_arrives_stays_cancelled() -> None:
    """The chunk arrives in the loop turn of the cancellation (a hung-up HTTP client, the coordinator streaming):
    asyncio.wait_for before Python 3.12 returned the chunk instead, and the stream never sent its Cancel."""
    client = AsyncClient("tcp://127.0.0.1:9")  # nothing is sent: only the request's queue is used
    try:
        queue: asyncio.Queue[Message] = asyncio.Queue()
        waiting = asyncio.ensure_future(client._next(queue))
        await asyncio.sleep(0)  # waiting for the queue
        queue.put_nowait(Chunk("r", [1], "a"))
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        await client.close()


async def test_a_wait_ends_at_its_timeout() -> None:
    client = AsyncClient("tcp://127.0.0.1:9", timeout_s=0.05)
    try:
        with pytest.raises(WorkerDeadError, match="no answer"):
            await client._next(asyncio.Queue())
    finally:
        await client.close()

"""Python clients of a Tandem deployment: `Client` (blocking) and `AsyncClient` (asyncio).

    client = Client.from_config("configs/demo.yaml")
    out = client.generate("def fib(n):", max_new_tokens=64)
    for chunk in client.stream("import os", max_new_tokens=32):
        print(chunk.text, end="")

A coordinator that does not answer within `timeout_s` raises WorkerDeadError naming its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from protocol.codec import decode, encode
from protocol.curve import ClientKeys, secure_client
from protocol.errors import ProtocolError, WorkerDeadError
from protocol.messages import Cancel, Chunk, Error, Generate, GetMetrics, Message, Metrics
from runtime.config import TandemConfig
from runtime.results import GenerationOutput, collect, error_to_exception, generate_message_fields
from runtime.security import client_keys

_M = TypeVar("_M", bound=Message)


def _new_id() -> str:
    return uuid.uuid4().hex


def _expect(message: Message, kind: type[_M]) -> _M:
    if not isinstance(message, kind):
        raise ProtocolError(f"expected a {kind.TYPE!r} message, got {message.TYPE!r}")
    return message


class Client:
    """Blocking client; one socket, safe for one thread."""

    def __init__(self, address: str, timeout_s: float = 60.0, curve: ClientKeys | None = None) -> None:
        self.address, self.timeout_s = address, timeout_s
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            secure_client(self.socket, curve)
        self.socket.connect(address)

    @classmethod
    def from_config(cls, path: str, timeout_s: float = 60.0) -> Client:
        """A client of the deployment in this YAML (with its CURVE keys when `security.curve` is on)."""
        config = TandemConfig.load(path)
        return cls(config.coordinator.client_address, timeout_s, client_keys(config.security))

    def generate(self, prompt_or_ids: str | list[int], max_new_tokens: int | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: str | list[str] | None = None,
                 stop_token_ids: list[int] | None = None, ignore_eos: bool = False) -> GenerationOutput:
        return collect(self.stream(prompt_or_ids, max_new_tokens, temperature, top_p, top_k, seed, stop,
                                   stop_token_ids, ignore_eos))

    def stream(self, prompt_or_ids: str | list[int], max_new_tokens: int | None = None, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: str | list[str] | None = None,
               stop_token_ids: list[int] | None = None, ignore_eos: bool = False) -> Iterator[Chunk]:
        """Chunks as they are committed; leaving the loop early cancels the request."""
        request_id = _new_id()
        fields = generate_message_fields(prompt_or_ids, max_new_tokens, temperature, top_p, top_k, seed, stop,
                                         stop_token_ids, ignore_eos)
        self._send(Generate(request_id, **fields))
        is_done = False
        try:
            while True:
                chunk = _expect(self._receive_for(request_id), Chunk)
                is_done = chunk.finish_reason is not None
                yield chunk
                if is_done:
                    return
        finally:
            if not is_done:  # best effort: a coordinator that cannot be reached at once gets no Cancel
                with contextlib.suppress(zmq.ZMQError, WorkerDeadError):
                    self._send(Cancel(request_id), timeout_s=0.0)

    def cancel(self, request_id: str) -> None:
        self._send(Cancel(request_id))

    def metrics(self) -> dict[str, Any]:
        request_id = _new_id()
        self._send(GetMetrics(request_id))
        return _expect(self._receive_for(request_id), Metrics).data

    def _send(self, message: Message, timeout_s: float | None = None) -> None:
        """Send, or raise WorkerDeadError when no connection to the coordinator is up within the timeout.

        A DEALER with no connected peer blocks on send (coordinator down, CURVE handshake refused).
        """
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        if not self.socket.poll(int(wait_s * 1000), zmq.POLLOUT):
            raise WorkerDeadError(f"cannot reach the coordinator at {self.address} within {wait_s} s")
        self.socket.send_multipart(encode(message), copy=False)

    def _receive_for(self, request_id: str) -> Message:
        """Next Chunk/Metrics for this request; an Error becomes an exception; others' messages are skipped."""
        while True:
            if not self.socket.poll(int(self.timeout_s * 1000), zmq.POLLIN):
                raise WorkerDeadError(f"no answer from the coordinator at {self.address} within {self.timeout_s} s")
            try:
                message = decode(self.socket.recv_multipart(copy=False))
            except ProtocolError:
                continue  # not ours to understand; the coordinator counts its own errors
            if isinstance(message, Error) and message.request_id in (request_id, None):
                raise error_to_exception(message)
            if getattr(message, "request_id", None) == request_id:
                return message

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client: many concurrent requests over one socket, routed by request id."""

    def __init__(self, address: str, timeout_s: float = 60.0, curve: ClientKeys | None = None) -> None:
        self.address, self.timeout_s = address, timeout_s
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            secure_client(self.socket, curve)
        self.socket.connect(address)
        self._queues: dict[str, asyncio.Queue[Message]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, path: str, timeout_s: float = 60.0) -> AsyncClient:
        config = TandemConfig.load(path)
        return cls(config.coordinator.client_address, timeout_s, client_keys(config.security))

    async def generate(self, prompt_or_ids: str | list[int], max_new_tokens: int | None = None,
                       temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                       stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
                       ignore_eos: bool = False) -> GenerationOutput:
        chunks = [c async for c in self.stream(prompt_or_ids, max_new_tokens, temperature, top_p, top_k, seed, stop,
                                               stop_token_ids, ignore_eos)]
        return collect(chunks)

    async def stream(self, prompt_or_ids: str | list[int], max_new_tokens: int | None = None,
                     temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
                     stop: str | list[str] | None = None, stop_token_ids: list[int] | None = None,
                     ignore_eos: bool = False) -> AsyncIterator[Chunk]:
        request_id = _new_id()
        fields = generate_message_fields(prompt_or_ids, max_new_tokens, temperature, top_p, top_k, seed, stop,
                                         stop_token_ids, ignore_eos)
        queue = self._open(request_id)
        is_done = False
        try:
            await self._send(Generate(request_id, **fields))
            while not is_done:
                chunk = _expect(await self._next(queue), Chunk)
                is_done = chunk.finish_reason is not None
                yield chunk
        finally:
            self._queues.pop(request_id, None)
            if not is_done:  # best effort, as in Client.stream
                with contextlib.suppress(zmq.ZMQError, WorkerDeadError):
                    await self._send(Cancel(request_id), timeout_s=0.0)

    async def cancel(self, request_id: str) -> None:
        await self._send(Cancel(request_id))

    async def metrics(self) -> dict[str, Any]:
        request_id = _new_id()
        queue = self._open(request_id)
        try:
            await self._send(GetMetrics(request_id))
            reply = _expect(await self._next(queue), Metrics)
        finally:
            self._queues.pop(request_id, None)
        return reply.data

    def _open(self, request_id: str) -> asyncio.Queue[Message]:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._queues[request_id] = queue
        return queue

    async def _next(self, queue: asyncio.Queue[Message]) -> Message:
        try:
            message = await asyncio.wait_for(queue.get(), self.timeout_s)
        except asyncio.TimeoutError:
            raise WorkerDeadError(f"no answer from the coordinator at {self.address} within "
                                  f"{self.timeout_s} s") from None
        if isinstance(message, Error):
            raise error_to_exception(message)
        return message

    async def _send(self, message: Message, timeout_s: float | None = None) -> None:
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        if not await self.socket.poll(int(wait_s * 1000), zmq.POLLOUT):  # type: ignore[call-arg]
            raise WorkerDeadError(f"cannot reach the coordinator at {self.address} within {wait_s} s")
        await self.socket.send_multipart(encode(message), copy=False)

    async def _read(self) -> None:
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            try:
                message = decode(frames)
            except ProtocolError:
                continue
            request_id = getattr(message, "request_id", None)
            targets = list(self._queues.values()) if request_id is None else \
                [q for rid, q in self._queues.items() if rid == request_id]
            for queue in targets:
                queue.put_nowait(message)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.socket.close(linger=0)
        self.context.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

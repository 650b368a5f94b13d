"""Python clients of a Tandem deployment: `Client` (blocking) and `AsyncClient` (asyncio).

    client = Client.from_config("configs/demo.yaml")
    out = client.generate("def fib(n):", max_new_tokens=64)
    for chunk in client.stream("import os", GenerationParams(max_new_tokens=32, temperature=0.8, seed=1)):
        print(chunk.text, end="")
    reply = client.chat([{"role": "user", "content": "Hi"}], max_new_tokens=32)

Settings travel as one `GenerationParams`; keyword arguments override its fields. Chat applies the
chat template here, on the client side (runtime.chat), and sends token ids.

A coordinator that does not answer within `timeout_s` raises WorkerDeadError naming its address;
`from_config` first checks that one answers at all (`probe`, a few seconds) and says how to start one.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, Generator
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from protocol.codec import decode, encode
from protocol.curve import ClientKeys, secure_client
from protocol.errors import ProtocolError, WorkerDeadError
from protocol.messages import Cancel, Chunk, Error, Generate, GetMetrics, Message, Metrics
from runtime.chat import ChatFormatter
from runtime.config import TandemConfig
from runtime.results import GenerationOutput, GenerationParams, collect, error_to_exception
from runtime.security import client_keys

_M = TypeVar("_M", bound=Message)
PROBE_TIMEOUT_S = 5.0  # how long `from_config` waits for a coordinator to answer before giving a hint
CANCEL_TIMEOUT_S = 1.0  # how long an AsyncClient stream that is left early may take to send its Cancel
START_HINT = ("start a deployment with `tandem launch --config FILE`, or run the pipeline in-process: "
              "`tandem generate --local ...` or `runtime.engine.Engine.from_config(FILE)`")


def _new_id() -> str:
    return uuid.uuid4().hex


def _from_config(config_path: str, chat_template: str | None) -> tuple[str, ChatFormatter, ClientKeys | None]:
    """The coordinator's address, a chat formatter on the target's tokenizer and the CURVE keys (when
    `security.curve` is on), from a deployment YAML."""
    config = TandemConfig.load(config_path)
    template = chat_template or (config.server.chat_template if config.server is not None else None)
    return (config.coordinator.client_address, ChatFormatter(None, template, config.verifier.model),
            client_keys(config.security))


def probe(address: str, curve: ClientKeys | None = None, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise WorkerDeadError with a hint unless a coordinator answers a metrics request at `address` in time.

    A client socket connects lazily, so without this a first request to an address where nothing listens
    only fails at the request's own (long) timeout."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        if curve is not None:
            secure_client(socket, curve)
        socket.connect(address)
        request_id = _new_id()
        if socket.poll(int(timeout_s * 1000), zmq.POLLOUT):
            socket.send_multipart(encode(GetMetrics(request_id)), flags=zmq.NOBLOCK)
            deadline_ms = int(timeout_s * 1000)
            while socket.poll(deadline_ms, zmq.POLLIN):
                with contextlib.suppress(ProtocolError):
                    if getattr(decode(socket.recv_multipart()), "request_id", None) == request_id:
                        return
    except zmq.ZMQError as err:
        raise WorkerDeadError(f"cannot reach a coordinator at {address} ({err}): {START_HINT}") from err
    finally:
        socket.close(linger=0)
        context.term()
    raise WorkerDeadError(f"nothing answers at {address} within {timeout_s:g} s: {START_HINT}")


async def _done_within(future: asyncio.Future[Any], timeout_s: float) -> bool:
    """Wait until `future` is done or `timeout_s` has passed (then it is cancelled and this returns False).

    Not `asyncio.wait_for`: before Python 3.12, a task cancelled in the loop turn in which the awaited
    future completes gets the future's result and its cancellation is lost. A stream whose next chunk had
    just arrived then ran on to its last token although its caller had been cancelled (a hung-up client).
    """
    if not future.done():
        try:
            await asyncio.wait({future}, timeout=timeout_s)
        except BaseException:  # the caller was cancelled
            future.cancel()
            raise
        if not future.done():
            future.cancel()  # a task is only cancelled at its next step: answer now
            return False
    return not future.cancelled()


def _expect(message: Message, kind: type[_M]) -> _M:
    if not isinstance(message, kind):
        raise ProtocolError(f"expected a {kind.TYPE!r} message, got {message.TYPE!r}")
    return message


class Client:
    """Blocking client; one socket, safe for one thread."""

    def __init__(self, address: str, timeout_s: float = 60.0, tokenizer: Any = None,
                 chat_template: str | None = None, curve: ClientKeys | None = None) -> None:
        self.address, self.timeout_s = address, timeout_s
        self.chat_formatter = ChatFormatter(tokenizer, chat_template)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            secure_client(self.socket, curve)
        self.socket.connect(address)

    @classmethod
    def from_config(cls, path: str, timeout_s: float = 60.0, chat_template: str | None = None,
                    probe_timeout_s: float | None = PROBE_TIMEOUT_S) -> Client:
        """Client of the deployment in `path`: its CURVE keys when `security.curve` is on; chat uses its
        target's tokenizer and `server.chat_template`. Unless `probe_timeout_s` is None, a coordinator must
        answer within it (else WorkerDeadError with a hint)."""
        address, formatter, keys = _from_config(path, chat_template)
        if probe_timeout_s is not None:
            probe(address, keys, probe_timeout_s)
        client = cls(address, timeout_s, curve=keys)
        client.chat_formatter = formatter
        return client

    def generate(self, prompt_or_ids: str | list[int], params: GenerationParams | None = None,
                 **overrides: Any) -> GenerationOutput:
        return collect(self.stream(prompt_or_ids, params, **overrides))

    def chat(self, messages: list[dict[str, Any]], params: GenerationParams | None = None,
             **overrides: Any) -> GenerationOutput:
        """One assistant turn for OpenAI-style messages, through the chat template."""
        return self.generate(self.chat_formatter.prompt_ids(messages), params, **overrides)

    def stream(self, prompt_or_ids: str | list[int], params: GenerationParams | None = None,
               **overrides: Any) -> Generator[Chunk, None, None]:
        """Chunks as they are committed; leaving the loop early (or `close()`) cancels the request."""
        request_id = _new_id()
        fields = GenerationParams.of(params, overrides).message_fields(prompt_or_ids)
        self._send(Generate(request_id, **fields))
        num_open, is_done = max(fields["n"], 1), False  # samples not finished yet
        try:
            while True:
                chunk = _expect(self._receive_for(request_id), Chunk)
                num_open -= chunk.finish_reason is not None
                is_done = num_open == 0
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
        unreachable = WorkerDeadError(f"cannot reach the coordinator at {self.address} within {wait_s} s")
        if not self.socket.poll(int(wait_s * 1000), zmq.POLLOUT):
            raise unreachable
        # the peer can vanish between poll and send (a CURVE handshake refused meanwhile): bounded send too
        self.socket.setsockopt(zmq.SNDTIMEO, max(int(wait_s * 1000), 1))
        try:
            self.socket.send_multipart(encode(message), copy=False)
        except zmq.Again:
            raise unreachable from None

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

    def __init__(self, address: str, timeout_s: float = 60.0, tokenizer: Any = None,
                 chat_template: str | None = None, curve: ClientKeys | None = None) -> None:
        self.address, self.timeout_s = address, timeout_s
        self.chat_formatter = ChatFormatter(tokenizer, chat_template)
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            secure_client(self.socket, curve)
        self.socket.connect(address)
        self._queues: dict[str, asyncio.Queue[Message]] = {}
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, path: str, timeout_s: float = 60.0, chat_template: str | None = None,
                    probe_timeout_s: float | None = PROBE_TIMEOUT_S) -> AsyncClient:
        """As `Client.from_config` (the probe blocks for at most `probe_timeout_s`)."""
        address, formatter, keys = _from_config(path, chat_template)
        if probe_timeout_s is not None:
            probe(address, keys, probe_timeout_s)
        client = cls(address, timeout_s, curve=keys)
        client.chat_formatter = formatter
        return client

    async def generate(self, prompt_or_ids: str | list[int], params: GenerationParams | None = None,
                       **overrides: Any) -> GenerationOutput:
        return collect([c async for c in self.stream(prompt_or_ids, params, **overrides)])

    async def chat(self, messages: list[dict[str, Any]], params: GenerationParams | None = None,
                   **overrides: Any) -> GenerationOutput:
        return await self.generate(self.chat_formatter.prompt_ids(messages), params, **overrides)

    async def stream(self, prompt_or_ids: str | list[int], params: GenerationParams | None = None,
                     **overrides: Any) -> AsyncGenerator[Chunk, None]:
        """Chunks as they are committed; closing the generator early (or cancelling its task) sends Cancel."""
        request_id = _new_id()
        fields = GenerationParams.of(params, overrides).message_fields(prompt_or_ids)
        queue = self._open(request_id)
        num_open, is_done = max(fields["n"], 1), False  # samples not finished yet
        try:
            await self._send(Generate(request_id, **fields))
            while not is_done:
                chunk = _expect(await self._next(queue), Chunk)
                num_open -= chunk.finish_reason is not None
                is_done = num_open == 0
                yield chunk
        finally:
            self._queues.pop(request_id, None)
            if not is_done:  # shielded: a cancelled caller (a client that hung up) still frees the request
                with contextlib.suppress(zmq.ZMQError, WorkerDeadError, asyncio.CancelledError):
                    await asyncio.shield(self._send(Cancel(request_id), timeout_s=CANCEL_TIMEOUT_S))

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
        """The next message for one request; a cancelled caller stays cancelled (see `_done_within`)."""
        if queue.empty():
            getting = asyncio.ensure_future(queue.get())
            if not await _done_within(getting, self.timeout_s):
                raise WorkerDeadError(f"no answer from the coordinator at {self.address} within "
                                      f"{self.timeout_s} s")
            message = getting.result()
        else:
            message = queue.get_nowait()
        if isinstance(message, Error):
            raise error_to_exception(message)
        return message

    async def _send(self, message: Message, timeout_s: float | None = None) -> None:
        """Send, or raise WorkerDeadError when the socket does not take the message within the timeout.

        The bound is this call's own, never the socket's SNDTIMEO: concurrent requests share the socket, and
        pyzmq applies SNDTIMEO to every send or POLLOUT poll that waits on it, so a Cancel's 1 ms made the
        next request's send fail with zmq.Again under load (and could drop a Cancel queued behind another send).
        """
        wait_s = self.timeout_s if timeout_s is None else timeout_s
        sending = asyncio.ensure_future(self.socket.send_multipart(encode(message), copy=False))  # pyzmq's Future
        if not await _done_within(sending, wait_s):
            raise WorkerDeadError(f"cannot reach the coordinator at {self.address} within {wait_s} s")
        sending.result()

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

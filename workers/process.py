"""A worker process: an I/O thread owns the socket, the main thread runs `handle` / `step`.

The I/O thread receives and decodes messages into a queue, forwards what the main thread sends
(through an inproc socket, since ZeroMQ sockets are not thread-safe) and sends heartbeats even while
the main thread is busy with a long forward. The main loop never touches the coordinator's socket.
When the coordinator no longer knows this worker (it restarted, or dropped it after a stall), the I/O
thread says Hello again and the main thread drops its per-request state (workers/handshake.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

import zmq

from protocol.codec import encode
from protocol.curve import ClientKeys
from protocol.errors import ProtocolError
from protocol.messages import Heartbeat, Hello, Message, Refused, Release, Shutdown, Welcome
from protocol.trace import now_us, tracer
from protocol.transport import DEFAULT_MAX_MESSAGE_BYTES, Endpoint, connect
from workers.handshake import Action, Handshake

log = logging.getLogger(__name__)
ZERO_COPY_BYTES = 64 * 1024


class Handler(Protocol):
    worker_id: str

    @property
    def requests(self) -> Mapping[str, Any]: ...  # per-request state, by request id

    def hello(self) -> Hello: ...
    def stats(self) -> dict[str, Any]: ...
    def handle(self, message: Message) -> list[Message]: ...
    def has_work(self) -> bool: ...
    def step(self) -> list[Message]: ...


class WorkerProcess:
    def __init__(self, handler: Handler, address: str, heartbeat_interval_s: float = 0.5,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, curve: ClientKeys | None = None) -> None:
        self.handler = handler
        self.address = address
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_message_bytes = max_message_bytes
        self.curve = curve
        self.context = zmq.Context()
        # (session, message); message None = a new session began: drop every request's state
        self.inbox: queue.Queue[tuple[int, Message | None]] = queue.Queue()
        self.handshake = Handshake(retry_s=10 * heartbeat_interval_s)
        self.num_stale_replies_dropped = 0
        self.stopping = threading.Event()
        self._pipe = f"inproc://outbox-{id(self)}"

    def run(self) -> int:
        """Serve until Shutdown or a refused handshake; returns the process exit code."""
        outbox = self.context.socket(zmq.PAIR)
        outbox.bind(self._pipe)
        io_thread = threading.Thread(target=self._io_loop, name="io", daemon=True)
        io_thread.start()
        try:
            return self._main_loop(outbox)
        finally:
            self.stopping.set()
            io_thread.join(timeout=2)
            outbox.close(linger=0)
            self.context.term()

    def _main_loop(self, outbox: zmq.Socket[Any]) -> int:
        session = 0  # of the last message handled; replies carry it so the I/O thread can drop stale ones
        while True:
            has_work = self.handler.has_work()
            waited_from = now_us()
            try:
                session, message = self.inbox.get(timeout=0 if has_work else 0.05)
            except queue.Empty:
                replies = self.handler.step() if has_work else []
                if not has_work:
                    tracer.complete("wait", waited_from, now_us() - waited_from)
            else:
                if not has_work:
                    tracer.complete("wait", waited_from, now_us() - waited_from)
                if message is None:
                    self._drop_requests()
                    continue
                if isinstance(message, Shutdown):
                    log.info("shutdown requested: %s", message.reason)
                    return 0
                if isinstance(message, Refused):
                    log.error("coordinator refused this worker: %s", message.reason)
                    return 2
                if isinstance(message, Welcome):
                    log.info("handshake done (mode %s)", message.mode)
                    continue
                with tracer.span(f"handle {message.TYPE}"):
                    replies = self.handler.handle(message)
            for reply in replies:
                with tracer.span(f"send {reply.TYPE}"):
                    frames = [session.to_bytes(8, "little"), *encode(reply)]
                    # small messages are cheaper copied than tracked for zero-copy (a GC callback each)
                    outbox.send_multipart(frames, copy=sum(memoryview(f).nbytes for f in frames) < ZERO_COPY_BYTES)

    def _drop_requests(self) -> None:
        """A new coordinator session knows none of our requests: free them all."""
        request_ids = list(self.handler.requests)
        for request_id in request_ids:
            self.handler.handle(Release(request_id))
        if request_ids:
            log.info("new session with the coordinator: dropped the state of %d requests", len(request_ids))

    def _io_loop(self) -> None:
        identity = self.handler.worker_id.encode()
        dealer = connect(self.context, zmq.DEALER, self.address, identity, self.max_message_bytes, self.curve)
        pipe = self.context.socket(zmq.PAIR)
        pipe.connect(self._pipe)
        poller = zmq.Poller()
        poller.register(dealer.socket, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        self._say_hello(dealer)
        next_beat = time.monotonic() + self.heartbeat_interval_s
        try:
            while not self.stopping.is_set():
                events = dict(poller.poll(timeout=int(self.heartbeat_interval_s * 500)))
                if pipe in events:
                    self._forward(pipe, dealer)
                if dealer.socket in events:
                    self._receive(dealer)
                if self.handshake.is_retry_due(time.monotonic()):
                    log.warning("no Welcome within %.1f s: saying Hello again", self.handshake.retry_s)
                    self._say_hello(dealer)
                if time.monotonic() >= next_beat:
                    dealer.send(Heartbeat(self.handler.worker_id, self.handler.stats()))
                    next_beat = time.monotonic() + self.heartbeat_interval_s
        except Exception:  # process boundary: log with the traceback, then stop the worker
            log.exception("I/O thread failed")
            self.inbox.put((self.handshake.session, Shutdown("I/O thread failed")))
        finally:
            pipe.close(linger=0)
            dealer.close()

    def _say_hello(self, dealer: Endpoint) -> None:
        dealer.send(self.handler.hello())
        self.handshake.hello_sent(time.monotonic())
        self.inbox.put((self.handshake.session, None))

    def _forward(self, pipe: zmq.Socket[Any], dealer: Endpoint) -> None:
        session, *frames = pipe.recv_multipart(copy=False)
        if int.from_bytes(session.bytes, "little") != self.handshake.session:
            self.num_stale_replies_dropped += 1  # an answer to the previous session's coordinator
            log.info("dropped a reply to a previous session (%d so far)", self.num_stale_replies_dropped)
            return
        dealer.socket.send_multipart(frames, copy=False)

    def _receive(self, dealer: Endpoint) -> None:
        try:
            received = dealer.recv()
        except ProtocolError as err:
            log.warning("dropped a malformed message: %s", err)
            return
        if received is None:
            return
        message = received[1]
        if isinstance(message, Welcome):
            self.handshake.on_welcome()
        elif isinstance(message, Refused):
            action = self.handshake.on_refused(message.reason)
            if action is Action.HELLO:
                self._say_hello(dealer)
            if action is not Action.EXIT:
                return
        self.inbox.put((self.handshake.session, message))

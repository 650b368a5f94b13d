"""A worker process: an I/O thread owns the socket, the main thread runs `handle` / `step`.

The I/O thread receives and decodes messages into a queue, forwards what the main thread sends
(through an inproc socket, since ZeroMQ sockets are not thread-safe) and sends heartbeats even while
the main thread is busy with a long forward. The main loop never touches the coordinator's socket.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Protocol

import zmq

from protocol.codec import encode
from protocol.errors import ProtocolError
from protocol.messages import Heartbeat, Hello, Message, Refused, Shutdown, Welcome
from protocol.trace import now_us, tracer
from protocol.transport import DEFAULT_MAX_MESSAGE_BYTES, Endpoint, connect

log = logging.getLogger(__name__)
ZERO_COPY_BYTES = 64 * 1024


class Handler(Protocol):
    worker_id: str

    def hello(self) -> Hello: ...
    def stats(self) -> dict[str, Any]: ...
    def handle(self, message: Message) -> list[Message]: ...
    def has_work(self) -> bool: ...
    def step(self) -> list[Message]: ...


class WorkerProcess:
    def __init__(self, handler: Handler, address: str, heartbeat_interval_s: float = 0.5,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.handler = handler
        self.address = address
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_message_bytes = max_message_bytes
        self.context = zmq.Context()
        self.inbox: queue.Queue[Message] = queue.Queue()
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
        while True:
            has_work = self.handler.has_work()
            waited_from = now_us()
            try:
                message = self.inbox.get(timeout=0 if has_work else 0.05)
            except queue.Empty:
                replies = self.handler.step() if has_work else []
                if not has_work:
                    tracer.complete("wait", waited_from, now_us() - waited_from)
            else:
                if not has_work:
                    tracer.complete("wait", waited_from, now_us() - waited_from)
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
                    frames = encode(reply)
                    # small messages are cheaper copied than tracked for zero-copy (a GC callback each)
                    outbox.send_multipart(frames, copy=sum(memoryview(f).nbytes for f in frames) < ZERO_COPY_BYTES)

    def _io_loop(self) -> None:
        identity = self.handler.worker_id.encode()
        dealer = connect(self.context, zmq.DEALER, self.address, identity, self.max_message_bytes)
        pipe = self.context.socket(zmq.PAIR)
        pipe.connect(self._pipe)
        poller = zmq.Poller()
        poller.register(dealer.socket, zmq.POLLIN)
        poller.register(pipe, zmq.POLLIN)
        dealer.send(self.handler.hello())
        next_beat = time.monotonic() + self.heartbeat_interval_s
        try:
            while not self.stopping.is_set():
                events = dict(poller.poll(timeout=int(self.heartbeat_interval_s * 500)))
                if pipe in events:
                    dealer.socket.send_multipart(pipe.recv_multipart(copy=False), copy=False)
                if dealer.socket in events:
                    self._receive(dealer)
                if time.monotonic() >= next_beat:
                    dealer.send(Heartbeat(self.handler.worker_id, self.handler.stats()))
                    next_beat = time.monotonic() + self.heartbeat_interval_s
        except Exception:  # process boundary: log with the traceback, then stop the worker
            log.exception("I/O thread failed")
            self.inbox.put(Shutdown("I/O thread failed"))
        finally:
            pipe.close(linger=0)
            dealer.close()

    def _receive(self, dealer: Endpoint) -> None:
        try:
            received = dealer.recv()
        except ProtocolError as err:
            log.warning("dropped a malformed message: %s", err)
            return
        if received is not None:
            self.inbox.put(received[1])

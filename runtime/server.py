"""The coordinator process: two ROUTER sockets around the `Coordinator`, one poll loop.

Headers are decoded here; tensor frames ride along inside the decoded `Blob`s untouched and are
sent on as they came (no copy, no torch in this process).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any

import zmq

from protocol.errors import ProtocolError
from protocol.messages import Shutdown
from protocol.trace import tracer
from protocol.transport import Endpoint, bind
from runtime.coordinator import Coordinator

log = logging.getLogger(__name__)


class CoordinatorServer:
    def __init__(self, coordinator: Coordinator, client_address: str, worker_address: str,
                 tick_interval_s: float = 0.1, max_message_bytes: int = 64 * 2**20) -> None:
        self.coordinator = coordinator
        self.context = zmq.Context()
        self.front = bind(self.context, zmq.ROUTER, client_address, "coordinator (client_address)", max_message_bytes)
        try:
            self.back = bind(self.context, zmq.ROUTER, worker_address, "coordinator (worker_address)",
                             max_message_bytes)
        except OSError:
            self.front.close()
            raise
        self.tick_interval_s = tick_interval_s
        self.stopping = threading.Event()

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front.socket, zmq.POLLIN)
        poller.register(self.back.socket, zmq.POLLIN)
        next_tick = time.monotonic()
        while not self.stopping.is_set():
            events = dict(poller.poll(timeout=int(self.tick_interval_s * 1000)))
            if self.front.socket in events:
                self._receive(self.front, from_client=True)
            if self.back.socket in events:
                self._receive(self.back, from_client=False)
            if time.monotonic() >= next_tick:  # deadlines and heartbeats: not once per message
                self.coordinator.tick()
                next_tick = time.monotonic() + self.tick_interval_s
            self._flush()

    def _receive(self, endpoint: Endpoint, from_client: bool) -> None:
        for _ in range(64):  # drain a burst, but keep both sockets served
            try:
                received = endpoint.recv(timeout_s=0)
            except ProtocolError as err:
                self.coordinator.on_malformed(err.identity, from_client, str(err))
                continue
            if received is None:
                return
            identity, message = received
            if identity is None:  # cannot happen on a ROUTER socket; nothing to answer to
                continue
            with tracer.span(f"on {message.TYPE}"):
                if from_client:
                    self.coordinator.on_client(identity, message)
                else:
                    self.coordinator.on_worker(identity, message)

    def _flush(self) -> None:
        outbox, self.coordinator.outbox = self.coordinator.outbox, []
        for identity, message, to_client in outbox:
            endpoint = self.front if to_client else self.back
            try:
                endpoint.send(message, identity)
            except zmq.ZMQError as err:  # the peer is gone (ROUTER_MANDATORY): nothing to deliver to
                log.warning("could not deliver %s to %r: %s", message.TYPE, identity, err.strerror)

    def shutdown_workers(self) -> None:
        for worker in list(self.coordinator.pool.workers.values()):
            with contextlib.suppress(zmq.ZMQError):  # a worker already gone needs no shutdown
                self.back.send(Shutdown("coordinator stopping"), worker.identity)

    def close(self) -> None:
        self.front.close()
        self.back.close()
        self.context.term()


def install_signal_handlers(server: CoordinatorServer) -> None:
    def stop(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        server.stopping.set()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

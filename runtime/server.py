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

from protocol.curve import ServerKeys
from protocol.errors import ProtocolError
from protocol.messages import Cancel, Shutdown
from protocol.trace import tracer
from protocol.transport import Endpoint, bind
from runtime.auth import CurveGate
from runtime.coordinator import Coordinator

log = logging.getLogger(__name__)


class CoordinatorServer:
    def __init__(self, coordinator: Coordinator, client_address: str, worker_address: str,
                 tick_interval_s: float = 0.1, max_message_bytes: int = 64 * 2**20,
                 curve: ServerKeys | None = None, client_keys_dir: str | None = None) -> None:
        """With `curve` keys both sockets are CURVE servers admitting the public keys in `client_keys_dir`."""
        self.coordinator = coordinator
        self.context = zmq.Context()
        self.gate = CurveGate(self.context, client_keys_dir or "") if curve is not None else None
        self.front = bind(self.context, zmq.ROUTER, client_address, "coordinator (client_address)", max_message_bytes,
                          curve)
        try:
            self.back = bind(self.context, zmq.ROUTER, worker_address, "coordinator (worker_address)",
                             max_message_bytes, curve)
        except OSError:
            self.front.close()
            if self.gate is not None:
                self.gate.stop()
            raise
        self.tick_interval_s = tick_interval_s
        self.stopping = threading.Event()

    def serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front.socket, zmq.POLLIN)
        poller.register(self.back.socket, zmq.POLLIN)
        next_tick = time.monotonic()
        monitors = [self.gate.watch(s.socket) for s in (self.front, self.back)] if self.gate is not None else []
        for monitor in monitors:
            poller.register(monitor, zmq.POLLIN)
        while not self.stopping.is_set():
            events = dict(poller.poll(timeout=int(self.tick_interval_s * 1000)))
            if self.gate is not None:
                for monitor in monitors:
                    self.gate.drain(monitor)
                self.coordinator.metrics.num_auth_refused = self.gate.num_refused
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
                if err.errno != zmq.EHOSTUNREACH:  # merely slow (EAGAIN): say so, it may come back
                    log.warning("could not deliver %s to %r: %s", message.TYPE, identity, err.strerror)
                elif to_client:
                    log.warning("client %r is gone: cancelling its requests", identity)
                    self._cancel_requests_of(identity)
                elif identity in self.coordinator.pool.workers:  # gone: no need to wait for its heartbeats
                    log.warning("worker %r is gone (%s undeliverable)", identity, message.TYPE)
                    self.coordinator.on_worker_gone(identity)

    def _cancel_requests_of(self, client: bytes) -> None:
        """A client that vanished without Cancel: its requests stop instead of running to their limit."""
        for request_id in [r.request_id for r in self.coordinator.requests.values() if r.client == client]:
            self.coordinator.on_client(client, Cancel(request_id))
        self.coordinator.outbox = [out for out in self.coordinator.outbox if out[0] != client or not out[2]]

    def shutdown_workers(self) -> None:
        for worker in list(self.coordinator.pool.workers.values()):
            with contextlib.suppress(zmq.ZMQError):  # a worker already gone needs no shutdown
                self.back.send(Shutdown("coordinator stopping"), worker.identity)

    def close(self) -> None:
        if self.gate is not None:
            self.gate.stop()
        self.front.close()
        self.back.close()
        self.context.term()


def install_signal_handlers(server: CoordinatorServer) -> None:
    def stop(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        server.stopping.set()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

"""The coordinator's CURVE gate: which public keys may connect, and a count of the peers refused.

A ZAP authenticator (pyzmq's `ThreadAuthenticator`) admits the public keys found in
`security.client_keys_dir`; a monitor on each coordinator socket counts failed handshakes, which
covers both a wrong key (denied by the authenticator) and a peer without CURVE at all (mechanism
mismatch, which never reaches the authenticator).
"""

from __future__ import annotations

import logging
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH


class CurveGate:
    def __init__(self, context: zmq.Context[Any], client_keys_dir: str) -> None:
        self.authenticator = ThreadAuthenticator(context, log=logging.getLogger("zmq.auth"))
        self.authenticator.start()
        self.authenticator.configure_curve(domain="*", location=client_keys_dir)
        self.monitors: list[zmq.Socket[Any]] = []
        self.num_refused = 0

    def watch(self, socket: zmq.Socket[Any]) -> zmq.Socket[Any]:
        """A monitor socket for `socket` (poll it, then `drain` it)."""
        monitor = socket.get_monitor_socket(_FAILED)
        self.monitors.append(monitor)
        return monitor

    def drain(self, monitor: zmq.Socket[Any]) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            self.num_refused += 1
            log.warning("refused a peer at %s: CURVE handshake failed (%s)",
                        event.get("endpoint", b"?").decode(errors="replace"), zmq.Event(event["event"]).name)

    def stop(self) -> None:
        for monitor in self.monitors:
            monitor.close(linger=0)
        self.authenticator.stop()

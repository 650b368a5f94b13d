"""ZeroMQ endpoints with typed send/receive, poll timeouts and bounded message size.

An `Endpoint` belongs to one thread (ZeroMQ sockets are not thread-safe). ROUTER endpoints return the
peer identity with every message and refuse to send to an unknown peer instead of dropping silently.
"""

from __future__ import annotations

from typing import Any

import zmq

from protocol.codec import decode, encode
from protocol.curve import ClientKeys, ServerKeys, secure_client, secure_server
from protocol.errors import ProtocolError
from protocol.messages import Message

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20


class Endpoint:
    """A socket plus the codec. `recv` raises ProtocolError for a malformed or oversized message."""

    def __init__(self, socket: zmq.Socket[Any], max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.socket = socket
        self.max_message_bytes = max_message_bytes
        self.is_router = socket.type == zmq.ROUTER

    def send(self, message: Message, identity: bytes | None = None) -> None:
        frames = encode(message)
        if self.is_router:
            if identity is None:
                raise ValueError("a ROUTER endpoint needs the peer identity to send")
            frames = [identity, *frames]
        self.socket.send_multipart(frames, copy=False)

    def poll(self, timeout_s: float) -> bool:
        return bool(self.socket.poll(int(timeout_s * 1000), zmq.POLLIN))

    def recv(self, timeout_s: float | None = None) -> tuple[bytes | None, Message] | None:
        """Next message as (identity or None, message); None when nothing arrived within the timeout."""
        if timeout_s is not None and not self.poll(timeout_s):
            return None
        frames = self.socket.recv_multipart(copy=False)
        identity = None
        if self.is_router:
            identity, frames = frames[0].bytes, frames[1:]
        size = sum(len(f) for f in frames)
        if size > self.max_message_bytes:
            raise ProtocolError(f"message of {size} bytes exceeds the limit of {self.max_message_bytes}", identity)
        try:
            return identity, decode(frames)
        except ProtocolError as err:
            raise ProtocolError(str(err), identity) from err

    def close(self) -> None:
        self.socket.close(linger=0)


def bind(context: zmq.Context[Any], socket_type: int, address: str, who: str,
         max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, curve: ServerKeys | None = None) -> Endpoint:
    """Bind a socket, or raise OSError saying who could not bind which address and why."""
    socket = context.socket(socket_type)
    _configure(socket, max_message_bytes)
    if curve is not None:
        secure_server(socket, curve)
    try:
        socket.bind(address)
    except zmq.ZMQError as err:
        socket.close(linger=0)
        raise OSError(f"{who} cannot bind {address}: {err.strerror}") from err
    return Endpoint(socket, max_message_bytes)


def connect(context: zmq.Context[Any], socket_type: int, address: str, identity: bytes | None = None,
            max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, curve: ClientKeys | None = None) -> Endpoint:
    socket = context.socket(socket_type)
    if identity is not None:
        socket.setsockopt(zmq.IDENTITY, identity)
    _configure(socket, max_message_bytes)
    if curve is not None:
        secure_client(socket, curve)
    socket.connect(address)
    return Endpoint(socket, max_message_bytes)


def _configure(socket: zmq.Socket[Any], max_message_bytes: int) -> None:
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)  # ZeroMQ drops a peer that sends a bigger frame
    if socket.type == zmq.ROUTER:
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)

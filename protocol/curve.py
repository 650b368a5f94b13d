"""ZeroMQ CURVE keys on a socket: the coordinator is a CURVE server, clients and workers CURVE clients.

Key files are the ones `zmq.auth.create_certificates` writes (`NAME.key` public, `NAME.key_secret`
public + secret); `scripts/make_keys.py` makes a set. Which public keys may connect is decided by the
coordinator's authenticator (runtime/auth.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zmq
import zmq.auth

from protocol.errors import ConfigError


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


def load_server_keys(secret_key_file: str) -> ServerKeys:
    public, secret = _load(secret_key_file, "security.server_secret_key_file")
    if secret is None:
        raise ConfigError(f"security.server_secret_key_file {secret_key_file} holds no secret key")
    return ServerKeys(public, secret)


def load_client_keys(secret_key_file: str, server_public_key_file: str) -> ClientKeys:
    public, secret = _load(secret_key_file, "security.client_secret_key_file")
    if secret is None:
        raise ConfigError(f"security.client_secret_key_file {secret_key_file} holds no secret key")
    server_public, _ = _load(server_public_key_file, "security.server_public_key_file")
    return ClientKeys(public, secret, server_public)


def _load(path: str, key: str) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}: cannot read a CURVE key from {path}: {err}") from err
    return public, secret


def secure_server(socket: zmq.Socket[Any], keys: ServerKeys) -> None:
    """Before bind: only CURVE peers whose key the authenticator accepts get through."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def secure_client(socket: zmq.Socket[Any], keys: ClientKeys) -> None:
    """Before connect: encrypt, and prove this peer's key to the coordinator."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public

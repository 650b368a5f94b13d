"""CURVE keys of each process, read from a deployment's `security` section (None when CURVE is off)."""

from __future__ import annotations

from protocol.curve import ClientKeys, ServerKeys, load_client_keys, load_server_keys
from runtime.config_schema import SecurityConfig


def server_keys(security: SecurityConfig) -> tuple[ServerKeys, str] | None:
    """The coordinator's key pair and the directory of public keys it lets in."""
    if not security.curve:
        return None
    secret_file, keys_dir = security.require("server_secret_key_file", "client_keys_dir")
    return load_server_keys(secret_file), keys_dir


def client_keys(security: SecurityConfig) -> ClientKeys | None:
    """A client's or worker's key pair and the coordinator's public key."""
    if not security.curve:
        return None
    secret_file, server_file = security.require("client_secret_key_file", "server_public_key_file")
    return load_client_keys(secret_file, server_file)

"""The one small error hierarchy shared by every Tandem process."""

from __future__ import annotations


class TandemError(Exception):
    """Base class for every error Tandem raises on purpose."""


class ConfigError(TandemError, ValueError):
    """A configuration file or value is invalid; the message names the key."""


class RequestError(TandemError, ValueError):
    """A request is invalid (empty prompt, bad sampling value, ...); the message names the field, and
    `param` is that field's name in the `Generate` message when one field is at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelMismatchError(TandemError, ValueError):
    """Two models cannot work together (vocabulary, tokenizer, hidden size); names both sides."""


class ProtocolError(TandemError):
    """A message is malformed, oversized or from an incompatible protocol version."""

    def __init__(self, message: str, identity: bytes | None = None) -> None:
        super().__init__(message)
        self.identity = identity  # the peer that sent it, when known (ROUTER sockets)


class WorkerDeadError(TandemError):
    """A worker or the coordinator stopped answering within its timeout."""


class OverloadedError(TandemError):
    """The coordinator's queue is full (`limits.max_queued_requests`); retry later."""


class RequestTimeoutError(WorkerDeadError):
    """A request ran past `limits.request_timeout_s`."""

"""The worker's side of Hello / Welcome, across coordinator restarts and its own stalls.

Each Hello opens a new *session*. Messages received in an older session belong to a coordinator
(or a coordinator's view of this worker) that is gone, so what the worker answers to them is
dropped instead of sent: a stale result is never applied.
"""

from __future__ import annotations

import enum
import logging

from protocol.handshake import UNKNOWN_WORKER

log = logging.getLogger(__name__)


class Action(enum.Enum):
    NONE = "none"
    HELLO = "hello"  # say Hello again (a new session)
    EXIT = "exit"  # refused for good (model mismatch, protocol version, id taken)


class Handshake:
    """States: pending (Hello sent, no Welcome yet) -> joined -> pending again on an unknown-worker refusal.

    `retry_s`: a Hello unanswered for this long is sent again (it went to a coordinator that died).
    """

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self.session = 0
        self.is_joined = False
        self._sent_at = 0.0

    def hello_sent(self, now: float) -> None:
        self.session += 1
        self.is_joined = False
        self._sent_at = now

    def on_welcome(self) -> None:
        self.is_joined = True

    def on_refused(self, reason: str) -> Action:
        if reason != UNKNOWN_WORKER:
            return Action.EXIT
        if self.is_joined:
            log.warning("the coordinator no longer knows this worker: saying Hello again")
            return Action.HELLO
        return Action.NONE  # a refusal of something sent before our latest Hello

    def is_retry_due(self, now: float) -> bool:
        return not self.is_joined and now - self._sent_at >= self.retry_s

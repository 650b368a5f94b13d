"""The worker's handshake states: join, re-join on an unknown-worker refusal, give up on any other."""

from __future__ import annotations

from protocol.handshake import UNKNOWN_WORKER
from workers.handshake import Action, Handshake


def test_states() -> None:
    handshake = Handshake(retry_s=2.0)
    handshake.hello_sent(now=0.0)
    assert handshake.session == 1 and not handshake.is_joined
    assert handshake.on_refused(UNKNOWN_WORKER) is Action.NONE  # an answer to something sent before the Hello
    assert not handshake.is_retry_due(1.9) and handshake.is_retry_due(2.0)  # the Hello itself was lost
    handshake.on_welcome()
    assert not handshake.is_retry_due(100.0)
    assert handshake.on_refused(UNKNOWN_WORKER) is Action.HELLO  # the coordinator forgot us
    handshake.hello_sent(now=5.0)
    assert handshake.session == 2
    assert handshake.on_refused("vocab_size mismatch: ...") is Action.EXIT

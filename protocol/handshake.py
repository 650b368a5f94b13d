"""Handshake rules both sides of the worker socket share.

A coordinator answers any message but `Hello` from a worker it does not know (it restarted, or it
dropped the worker after missed heartbeats) with `Refused(reason=UNKNOWN_WORKER)`. A worker that
gets it drops its per-request state and says `Hello` again; any other refusal is final.
"""

from __future__ import annotations

UNKNOWN_WORKER = "send Hello first"

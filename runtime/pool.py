"""The coordinator's view of its workers: handshakes, liveness and load."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from protocol.messages import PROTOCOL_VERSION, Hello

log = logging.getLogger(__name__)


@dataclass
class Worker:
    identity: bytes
    role: str
    device: str
    needs_features: bool
    last_seen: float
    stats: dict[str, Any] = field(default_factory=dict)
    requests: set[str] = field(default_factory=set)
    worker_id: str = ""
    pid: int = 0


class WorkerPool:
    def __init__(self, reference: dict[str, Any], timeout_s: float) -> None:
        self.reference = reference  # the target's fingerprint: vocab_size, hidden_size, tokenizer_hash
        self.timeout_s = timeout_s
        self.workers: dict[bytes, Worker] = {}

    def admit(self, identity: bytes, hello: Hello, now: float) -> str | None:
        """Register a worker; returns the reason it is refused, or None."""
        reason = self.mismatch(hello) or self.id_taken(identity, hello)
        if reason is None:
            self.workers[identity] = Worker(identity, hello.role, hello.device, hello.needs_features, now,
                                            worker_id=hello.worker_id, pid=hello.pid)
            log.info("%s %s joined on %s", hello.role, hello.worker_id, hello.device)
        return reason

    def mismatch(self, hello: Hello) -> str | None:
        if hello.protocol_version != PROTOCOL_VERSION:
            return f"protocol version {hello.protocol_version} != coordinator's {PROTOCOL_VERSION}"
        if hello.role not in ("verifier", "drafter"):
            return f"unknown role {hello.role!r}"
        ours, theirs = self.reference, hello.fingerprint
        keys = ["vocab_size"] + (["hidden_size"] if hello.role == "verifier" or hello.needs_features else [])
        for key in keys:
            if ours.get(key) and theirs.get(key) and ours[key] != theirs[key]:
                return (f"{key} mismatch: {hello.role} {hello.worker_id} ({theirs.get('model') or '?'}) has "
                        f"{theirs[key]}, the target ({ours.get('model') or '?'}) has {ours[key]}")
        if ours.get("tokenizer_hash") and theirs.get("tokenizer_hash") \
                and ours["tokenizer_hash"] != theirs["tokenizer_hash"]:
            return (f"tokenizer mismatch: {hello.role} {hello.worker_id} ({theirs.get('model')}) tokenizer "
                    f"{theirs['tokenizer_hash']} != target ({ours.get('model')}) tokenizer {ours['tokenizer_hash']}")
        return None

    def id_taken(self, identity: bytes, hello: Hello) -> str | None:
        """A second peer may not claim the id of a live worker (a restart reuses the same socket identity)."""
        if any(w.worker_id == hello.worker_id and w.identity != identity for w in self.workers.values()):
            return f"worker id {hello.worker_id!r} is taken by a live worker"
        return None

    def seen(self, identity: bytes, now: float, stats: dict[str, Any] | None = None) -> Worker | None:
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = now
            if stats is not None:
                worker.stats = stats
        return worker

    def expire(self, now: float) -> list[Worker]:
        """Remove and return the workers silent for longer than the timeout."""
        dead = [w for w in self.workers.values() if now - w.last_seen > self.timeout_s]
        for worker in dead:
            log.warning("%s %r missed its heartbeats for %.1f s: dropped", worker.role, worker.identity,
                        now - worker.last_seen)
            del self.workers[worker.identity]
        return dead

    def of_role(self, role: str) -> list[Worker]:
        return [w for w in self.workers.values() if w.role == role]

    def least_loaded(self, role: str) -> Worker | None:
        candidates = self.of_role(role)
        return min(candidates, key=lambda w: len(w.requests)) if candidates else None


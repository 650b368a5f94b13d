"""The coordinator: owns every request and decides what each worker's cache must hold.

Events come in (`on_client`, `on_worker`, `tick`), messages go out through `outbox`; no sockets
here, so the same object runs behind ZeroMQ (runtime/server.py) and in-process (runtime/engine.py).
The request lifecycle of docs/design.md §3, step by step:
  1. `_admit`            Generate -> validated Request, queued
  2. `_start`            verifier (+ drafter) assigned, Prefill sent
  3-4, 8. `_on_committed` tokens appended under the stop rules, streamed; Open/Commit to the drafter
  5-6. `_on_draft`       newest snapshot of the current epoch kept
  6-7. `_dispatch`       an idle verifier gets the next ready request's snapshot (or an empty tree)
  9. `_finish`           last chunk, Release to both workers
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from protocol.drafts import draft_problem
from protocol.errors import RequestError
from protocol.handshake import UNKNOWN_WORKER
from protocol.messages import (
    Blob,
    Cancel,
    Chunk,
    Commit,
    Committed,
    Draft,
    Error,
    Failed,
    Generate,
    GetMetrics,
    Heartbeat,
    Hello,
    Message,
    Metrics,
    Open,
    Prefill,
    Refused,
    Release,
    Welcome,
)
from runtime.admission import build_request
from runtime.config import TandemConfig
from runtime.metrics import RuntimeMetrics
from runtime.pool import Worker, WorkerPool
from runtime.request import Phase, Request

log = logging.getLogger(__name__)
Outgoing = tuple[bytes, Message, bool]  # (peer identity, message, is the peer a client)


class Coordinator:
    def __init__(self, config: TandemConfig, tokenizer: Any, reference: dict[str, Any],
                 eos_token_ids: frozenset[int] = frozenset(), clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = config.speculation.mode
        self.tree = config.speculation.tree
        self.limits = config.limits
        self.tokenizer, self.reference, self.eos_token_ids, self.clock = tokenizer, reference, eos_token_ids, clock
        self.pool = WorkerPool(reference, config.coordinator.worker_timeout_s)
        self.requests: dict[str, Request] = {}
        self.metrics = RuntimeMetrics()
        self.outbox: list[Outgoing] = []
        self._served_at: dict[str, float] = {}

    # ---- events ----------------------------------------------------------------------------------

    def on_client(self, client: bytes, message: Message) -> None:
        if isinstance(message, Generate):
            self._admit(client, message)
        elif isinstance(message, Cancel):
            request = self.requests.get(message.request_id)
            if request is not None and request.client == client:
                self._finish(request, "cancelled")
        elif isinstance(message, GetMetrics):
            self._to_client(client, Metrics(message.request_id, self.metrics_snapshot()))
        else:
            self._to_client(client, Error(getattr(message, "request_id", None), "bad_request",
                                          f"clients cannot send {message.TYPE!r} messages"))
        self._dispatch()

    def on_worker(self, identity: bytes, message: Message) -> None:
        now = self.clock()
        if isinstance(message, Hello):
            self._on_hello(identity, message, now)
        elif (worker := self.pool.seen(identity, now, getattr(message, "stats", None))) is None:
            self._on_unknown_worker(identity, message)
        elif isinstance(message, Heartbeat):
            if worker.role == "drafter":
                self.metrics.drafter_stats[message.worker_id] = message.stats
        elif isinstance(message, Committed):
            self._on_committed(worker, message)
        elif isinstance(message, Draft):
            self._on_draft(worker, message)
        elif isinstance(message, Failed):
            self._on_failed(worker, message)
        self._dispatch()

    def on_malformed(self, identity: bytes | None, from_client: bool, reason: str) -> None:
        self.metrics.num_malformed_dropped += 1
        log.warning("dropped a malformed message from %s %r: %s", "client" if from_client else "worker",
                    identity, reason)
        if from_client and identity is not None:
            self._to_client(identity, Error(None, "bad_request", reason))

    def tick(self) -> None:
        now = self.clock()
        for worker in self.pool.expire(now):
            self._on_worker_lost(worker)
        for request in [r for r in self.requests.values() if now > r.deadline]:
            self._fail(request, "timeout", f"request {request.request_id} exceeded limits.request_timeout_s="
                       f"{self.limits.request_timeout_s}")
        self._dispatch()

    # ---- lifecycle ---------------------------------------------------------------------------------

    def _admit(self, client: bytes, message: Generate) -> None:
        if message.request_id in self.requests:
            self._to_client(client, Error(message.request_id, "bad_request",
                                          f"request_id {message.request_id!r} is already in use"))
            return
        if sum(r.phase is Phase.QUEUED for r in self.requests.values()) >= self.limits.max_queued_requests:
            self._to_client(client, Error(message.request_id, "overloaded",
                                          f"{self.limits.max_queued_requests} requests already queued"))
            return
        try:
            request = build_request(message, client, self.tokenizer, int(self.reference["vocab_size"]),
                                    self.limits, self.eos_token_ids)
        except RequestError as err:
            self._to_client(client, Error(message.request_id, "bad_request", str(err)))
            return
        request.deadline = self.clock() + self.limits.request_timeout_s
        self.requests[request.request_id] = request
        self._served_at[request.request_id] = self.clock()
        self.metrics.started(self.clock())

    def _start(self, request: Request, verifier: Worker) -> None:
        """Step 2 (and a resync after a verifier was lost): assign workers, (re)build the verifier cache."""
        is_new = request.phase is Phase.QUEUED
        request.verifier = verifier.identity
        verifier.requests.add(request.request_id)
        if is_new and self.mode != "off":
            drafter = self.pool.least_loaded("drafter")
            if drafter is not None:
                request.drafter = drafter.identity
                drafter.requests.add(request.request_id)
        drafter_worker = self.pool.workers.get(request.drafter) if request.drafter else None
        wants_features = drafter_worker is not None and drafter_worker.needs_features
        wants_features &= is_new or request.wants_features_resync
        sampling = dataclasses.asdict(request.params)
        ids = request.committed if is_new else request.committed[:-1]
        budget = self.tree.total_tokens if self.mode != "off" else 0
        self._send_verifier(verifier, request, Prefill(request.request_id, request.epoch, ids, sampling,
                                                       sample_next=is_new, want_features=wants_features,
                                                       max_tree_nodes=budget))
        request.phase = Phase.PREFILLING

    def _on_committed(self, worker: Worker, message: Committed) -> None:
        if worker.busy_with == message.request_id:
            worker.busy_with = None
        self.metrics.verifier_compute_s += message.compute_s
        request = self.requests.get(message.request_id)
        if request is None or request.phase not in (Phase.PREFILLING, Phase.VERIFYING) \
                or message.epoch != request.epoch or request.verifier != worker.identity:
            self.metrics.num_stale_dropped += 1
            return
        was_prefill = request.phase is Phase.PREFILLING
        if not message.token_ids:  # a resync: the verifier's cache is rebuilt, nothing new committed
            request.phase = Phase.READY
            if request.wants_features_resync:
                request.wants_features_resync = False
                self._send_to_drafter(request, message, was_prefill=True)  # Open with every feature
            return
        kept, delta = request.apply(message.token_ids)
        if not was_prefill:
            request.stats.record(len(message.token_ids) - 1, message.tree_depth, len(kept))
            self.metrics.spec.record(len(message.token_ids) - 1, message.tree_depth, len(kept))
        self.metrics.num_generated += len(kept)
        self.metrics.started(self.clock())
        if request.finish_reason is not None:
            self._finish(request, request.finish_reason, kept, delta)
            return
        self._to_client(request.client, Chunk(request.request_id, kept, delta))
        self._send_to_drafter(request, message, was_prefill)

    def _send_to_drafter(self, request: Request, message: Committed, was_prefill: bool) -> None:
        """Step 4: the drafter opens the request, or re-roots / rolls back its living tree."""
        request.draft = None
        drafter = self.pool.workers.get(request.drafter) if request.drafter else None
        if drafter is None:
            request.phase = Phase.READY
            return
        if was_prefill:
            out: Message = Open(request.request_id, request.epoch, list(request.committed), message.features)
        else:
            out = Commit(request.request_id, request.epoch, list(message.token_ids), message.features)
        self.outbox.append((drafter.identity, out, False))
        request.phase = Phase.DRAFTING

    def _on_draft(self, worker: Worker, message: Draft) -> None:
        request = self.requests.get(message.request_id)
        if request is None or request.phase is not Phase.DRAFTING or message.epoch != request.epoch \
                or request.drafter != worker.identity:
            self.metrics.num_stale_dropped += 1
            return
        if (problem := self._draft_problem(message)) is not None:  # never reaches a verifier
            self.metrics.num_malformed_dropped += 1
            log.warning("malformed draft for %s from %r: %s; going on verifier-only", request.request_id,
                        worker.identity, problem)
            request.drafter, request.drafter_failed = None, True
            worker.requests.discard(request.request_id)
            self.outbox.append((worker.identity, Release(request.request_id), False))
        request.draft = message if problem is None else None
        request.phase = Phase.READY

    def _draft_problem(self, message: Draft) -> str | None:
        budget = self.tree.total_tokens if self.mode != "off" else 0
        return draft_problem(message, budget, int(self.reference["vocab_size"]))

    def _dispatch(self) -> None:
        """Steps 2 and 6-7: every idle verifier gets the request that has waited longest."""
        drafter = self.pool.least_loaded("drafter") if self.mode != "off" else None
        for request in self.requests.values():
            if request.phase is Phase.DRAFTING and request.drafter not in self.pool.workers:
                request.drafter, request.phase = None, Phase.READY  # drafter gone: verifier-only
            if request.phase is Phase.READY and request.drafter is None and drafter and not request.drafter_failed:
                self._adopt(request, drafter)
        for verifier in self.pool.idle_verifiers():
            waiting = [r for r in self.requests.values()
                       if (r.phase is Phase.READY and r.verifier == verifier.identity)
                       or r.phase is Phase.QUEUED
                       or (r.phase is Phase.RESYNC and r.verifier in (None, verifier.identity))]
            if not waiting:
                continue
            request = min(waiting, key=lambda r: self._served_at.get(r.request_id, 0.0))
            self._served_at[request.request_id] = self.clock()
            if request.phase is Phase.READY:
                self._send_verify(verifier, request)
            else:
                self._start(request, verifier)

    def _send_verify(self, verifier: Worker, request: Request) -> None:
        drafter = self.pool.workers.get(request.drafter) if request.drafter else None
        wants_features = drafter is not None and drafter.needs_features
        draft = request.draft if request.draft is not None else _empty_draft(request)
        self._send_verifier(verifier, request, dataclasses.replace(draft, want_features=wants_features))
        request.draft = None
        request.phase = Phase.VERIFYING

    def _finish(self, request: Request, reason: str, kept: list[int] | None = None, delta: str = "") -> None:
        """Step 9: the last chunk with the stats, then every worker frees the request."""
        request.phase = Phase.DONE
        request.stats.elapsed_s = self.clock() - request.started
        self._to_client(request.client, Chunk(request.request_id, kept or [], delta, reason, request.stats.as_dict()))
        self._release(request)
        self.metrics.num_finished += 1

    def _fail(self, request: Request, code: str, message: str) -> None:
        log.warning("request %s failed (%s): %s", request.request_id, code, message)
        self._to_client(request.client, Error(request.request_id, code, message))
        self._release(request)
        self.metrics.num_errors += 1

    def _release(self, request: Request) -> None:
        for identity in (request.verifier, request.drafter):
            worker = self.pool.workers.get(identity) if identity else None
            if worker is not None:
                worker.requests.discard(request.request_id)
                self.outbox.append((worker.identity, Release(request.request_id), False))
        self.requests.pop(request.request_id, None)
        self._served_at.pop(request.request_id, None)

    # ---- workers -----------------------------------------------------------------------------------

    def _on_hello(self, identity: bytes, hello: Hello, now: float) -> None:
        previous = self.pool.workers.pop(identity, None)
        if previous is not None:  # restarted under the same id before its heartbeats ran out
            self._on_worker_lost(previous)
        reason = self.pool.admit(identity, hello, now)
        if reason is not None:
            self.metrics.num_workers_refused += 1
            log.error("refused %s %s: %s", hello.role, hello.worker_id, reason)
            self.outbox.append((identity, Refused(hello.worker_id, reason), False))
            return
        self.outbox.append((identity, Welcome(hello.worker_id, self.mode), False))

    def _adopt(self, request: Request, drafter: Worker) -> None:
        """A drafter takes over a running request that has none (its drafter died, or none was there).

        A drafter that reads no features opens from the committed tokens at once; one that does (Falcon)
        needs the target's features of every committed position, so the verifier resyncs first.
        """
        request.drafter = drafter.identity
        drafter.requests.add(request.request_id)
        if drafter.needs_features:
            request.wants_features_resync, request.phase = True, Phase.RESYNC
        else:
            self.outbox.append((drafter.identity, Open(request.request_id, request.epoch,
                                                       list(request.committed)), False))
            request.phase = Phase.DRAFTING

    def _on_worker_lost(self, worker: Worker) -> None:
        for request in [self.requests[r] for r in worker.requests if r in self.requests]:
            if worker.role == "drafter":
                request.drafter = None
                if request.phase is Phase.DRAFTING:
                    request.phase = Phase.READY
            else:  # the committed tokens are safe here: a new verifier re-prefills and the request goes on
                request.verifier = None
                request.phase = Phase.QUEUED if request.epoch == len(request.prompt_ids) else Phase.RESYNC

    def _on_failed(self, worker: Worker, message: Failed) -> None:
        if worker.busy_with == message.request_id:
            worker.busy_with = None
        request = self.requests.get(message.request_id)
        if message.code == "stale_epoch" or request is None \
                or worker.identity not in (request.verifier, request.drafter):  # not this worker's request
            self.metrics.num_stale_dropped += 1
        elif worker.role == "drafter":
            log.warning("drafter failed on %s (%s): %s; going on verifier-only", message.request_id, message.code,
                        message.message)
            request.drafter, request.drafter_failed = None, True
            if request.phase is Phase.DRAFTING:
                request.phase = Phase.READY
        else:
            self._fail(request, message.code, message.message)

    def _on_unknown_worker(self, identity: bytes, message: Message) -> None:
        """Restarted coordinator, or a worker dropped after a stall: whatever it sends is stale until it says Hello."""
        self.metrics.num_stale_dropped += 1
        log.info("dropped %s from unknown worker %r: asked it to say Hello", message.TYPE, identity)
        self.outbox.append((identity, Refused(identity.decode(errors="replace"), UNKNOWN_WORKER), False))

    # ---- helpers -----------------------------------------------------------------------------------

    def _send_verifier(self, verifier: Worker, request: Request, message: Message) -> None:
        verifier.busy_with = request.request_id
        self.outbox.append((verifier.identity, message, False))

    def _to_client(self, client: bytes, message: Message) -> None:
        self.outbox.append((client, message, True))

    def metrics_snapshot(self) -> dict[str, Any]:
        workers = [{"identity": w.identity.decode(errors="replace"), "role": w.role, "device": w.device, "pid": w.pid,
                    "num_requests": len(w.requests), "busy": w.busy_with is not None,
                    "worker_num_requests": w.stats.get("num_requests")}  # the worker's own count (heartbeat)
                   for w in self.pool.workers.values()]
        queued = sum(r.phase is Phase.QUEUED for r in self.requests.values())
        return self.metrics.snapshot(len(self.requests) - queued, queued, workers)


def _empty_draft(request: Request) -> Draft:
    """A tree with no nodes: the verifier commits one token (verifier-only decoding)."""
    return Draft(request.request_id, request.epoch, request.committed[-1], Blob("int64", (0,), b""),
                 Blob("int64", (0,), b""), Blob("float32", (0,), b""))

"""The coordinator: owns every request, applies results in epoch order, and tells workers what to hold.

Events come in (`on_client`, `on_worker`, `tick`), messages go out through `outbox`; no sockets and
no torch here, so the same object runs behind ZeroMQ (runtime/server.py) and in-process
(runtime/engine.py). The request lifecycle of docs/design.md §3, step by step:
  1. `_admit`         Generate -> validated Requests (one per sample, n > 1), queued
  2. `_start`         a verifier (and a drafter) assigned; Prefill with the run settings
  3. `_on_committed`  the verifier's results, in epoch order: stop rules, streaming, Open/Commit to the drafter
  4. `_on_draft`      a drafter's living tree, forwarded to the request's verifier at once
  5. `_finish`        last chunk with the stats, Release to both workers
The verifier drives each request itself (verify -> commit -> re-root -> verify); the coordinator is
never on that path. It stays the authority for stop rules, streaming and epochs: a result past a
stop, or from a worker that no longer holds the request, is dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from protocol.drafts import MAX_TREE_NODES, draft_problem
from protocol.errors import RequestError
from protocol.handshake import UNKNOWN_WORKER
from protocol.logprobs import Logprobs
from protocol.messages import (
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
    Steer,
    Welcome,
)
from runtime.admission import build_requests
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
        self.requests: dict[str, Request] = {}  # in arrival order
        self.metrics = RuntimeMetrics()
        self.outbox: list[Outgoing] = []
        self._needs_dispatch = False  # set by what can change an assignment: admission, workers, finishes

    # ---- events ----------------------------------------------------------------------------------

    def on_client(self, client: bytes, message: Message) -> None:
        if isinstance(message, Generate):
            self._admit(client, message)
        elif isinstance(message, Cancel):
            for request in self._samples(message.request_id):
                if request.client == client:
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
            self.metrics.worker_stats[message.worker_id] = {"role": worker.role, **message.stats}
        elif isinstance(message, Committed):
            self._on_committed(worker, message)
        elif isinstance(message, Draft):
            self._on_draft(worker, message)
        elif isinstance(message, Failed):
            self._on_failed(worker, message)
        self._dispatch()

    def on_worker_gone(self, identity: bytes) -> None:
        """The transport cannot reach this worker any more (its socket closed): lost now, not at its timeout."""
        worker = self.pool.workers.pop(identity, None)
        if worker is not None:
            self._on_worker_lost(worker)
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
            if request.request_id in self.requests:  # not failed with a sibling sample already
                self._fail(request, "timeout", f"request {request.client_request_id} exceeded "
                           f"limits.request_timeout_s={self.limits.request_timeout_s}")
        self._dispatch()

    # ---- lifecycle ---------------------------------------------------------------------------------

    def _admit(self, client: bytes, message: Generate) -> None:
        if message.request_id in self.requests or self._samples(message.request_id):
            self._to_client(client, Error(message.request_id, "bad_request",
                                          f"request_id {message.request_id!r} is already in use", "request_id"))
            return
        queued = {r.client_request_id for r in self.requests.values() if r.phase is Phase.QUEUED}
        if len(queued) >= self.limits.max_queued_requests:  # a request of n samples counts once
            self._to_client(client, Error(message.request_id, "overloaded",
                                          f"{self.limits.max_queued_requests} requests already queued"))
            return
        try:
            samples = build_requests(message, client, self.tokenizer, int(self.reference["vocab_size"]),
                                     self.limits, self.eos_token_ids, self.clock())
        except RequestError as err:
            self._to_client(client, Error(message.request_id, "bad_request", str(err), err.param))
            return
        for request in samples:
            self.requests[request.request_id] = request
        self.metrics.started(self.clock())
        self._needs_dispatch = True

    def _dispatch(self) -> None:
        """Queued requests get a verifier; running requests without a drafter get one when there is one."""
        if not self._needs_dispatch:
            return
        self._needs_dispatch = False
        for request in [r for r in self.requests.values() if r.phase is Phase.QUEUED]:
            verifier = self._verifier_for(request)
            if verifier is None or len(verifier.requests) >= self.limits.max_running_per_verifier:
                break
            self._start(request, verifier)
        drafter = self.pool.least_loaded("drafter") if self.mode != "off" else None
        if drafter is not None:
            for request in self.requests.values():
                if request.phase is Phase.RUNNING and request.drafter is None and not request.drafter_failed:
                    self._adopt(request, drafter)

    def _verifier_for(self, request: Request) -> Worker | None:
        """Sample i > 0 goes where sample 0 runs while it has room (the verifier shares their prompt's cache)."""
        first = self.requests.get(request.client_request_id) if request.index else None
        worker = self.pool.workers.get(first.verifier) if first is not None and first.verifier else None
        if worker is not None and len(worker.requests) < self.limits.max_running_per_verifier:
            return worker
        return self.pool.least_loaded("verifier")

    def _prefix_from(self, request: Request, verifier: Worker) -> str:
        """Sample 0's id when it is still prefilling on this verifier: the verifier copies its prompt's cache."""
        first = self.requests.get(request.client_request_id) if request.index else None
        if first is None or first.verifier != verifier.identity or first.phase is not Phase.PREFILLING:
            return ""
        return first.request_id

    def _start(self, request: Request, verifier: Worker) -> None:
        """Step 2 (and a resync after a verifier was lost): the verifier (re)builds the cache and runs."""
        is_new = not request.generated
        if is_new and self.mode != "off" and request.drafter is None and not request.drafter_failed:
            drafter = self.pool.least_loaded("drafter")
            if drafter is not None:
                request.link_drafter(drafter.identity)
                drafter.requests.add(request.request_id)
        verifier.requests.add(request.request_id)
        request.assign_verifier(verifier.identity)
        self._send(request.verifier, Prefill(
            request.request_id, request.epoch, list(request.committed), dataclasses.asdict(request.params),
            sample_next=is_new, want_features=self._wants_features(request),
            max_tree_nodes=self.tree.total_tokens if self.mode != "off" else 0, mode=self._verifier_mode(request),
            max_length=request.max_length, stop_token_ids=sorted(request.rules.stop_token_ids),
            num_logprobs=request.num_logprobs, num_prompt_logprobs=request.num_prompt_logprobs if is_new else None,
            prefix_from=self._prefix_from(request, verifier) if is_new else ""))

    def _on_committed(self, worker: Worker, message: Committed) -> None:
        self.metrics.verifier_compute_s += message.compute_s  # busy time, whether or not the result is used
        request = self.requests.get(message.request_id)
        if request is None or request.phase not in (Phase.PREFILLING, Phase.RUNNING) \
                or message.epoch != request.epoch or request.verifier != worker.identity:
            self.metrics.num_stale_dropped += 1
            return
        was_prefill = request.phase is Phase.PREFILLING
        if was_prefill:
            request.prefilled()
            self._needs_dispatch = True  # a running request may now be adopted by a drafter
        if not message.token_ids:  # a resync, or features sent for a drafter that is taking over
            if request.is_features_pending and not was_prefill and message.features is not None:
                self._open_drafter(request, message)
            return
        kept, delta = request.apply(message.token_ids)
        logprobs = message.logprobs.head(len(kept)) if message.logprobs is not None else None
        prompt_logprobs = message.prompt_logprobs if was_prefill else None
        if not was_prefill:
            record = (len(message.token_ids) - 1, message.tree_depth, len(kept), message.num_nodes,
                      message.reroot_hit, message.off_top)
            request.stats.record(*record)
            self.metrics.spec.record(*record)
        self.metrics.num_generated += len(kept)
        self.metrics.started(self.clock())
        if request.finish_reason is not None:
            self._finish(request, request.finish_reason, kept, delta, logprobs, prompt_logprobs)
            return
        self._to_client(request.client, self._chunk(request, kept, delta, logprobs=logprobs,
                                                    prompt_logprobs=prompt_logprobs))
        if was_prefill and request.drafter is not None and not request.is_drafter_open:
            self._open_drafter(request, message)  # a new request: Open with the prompt's features
        elif request.is_drafter_open and request.drafter is not None:
            self._send(request.drafter, Commit(request.request_id, request.epoch, list(message.token_ids),
                                               message.features))

    def _on_draft(self, worker: Worker, message: Draft) -> None:
        """Step 4: forward at once; the verifier re-roots it along whatever it committed since."""
        request = self.requests.get(message.request_id)
        is_current = request is not None and request.phase is Phase.RUNNING and request.drafter == worker.identity
        # malformed is a property of the message, whatever its request's state: checked first, so a bad tree
        # counts as malformed even when its request finished while it was on the wire
        if (problem := self._draft_problem(message)) is not None:  # never reaches a verifier
            self.metrics.num_malformed_dropped += 1
            log.warning("malformed draft for %s from %r: %s", message.request_id, worker.identity, problem)
            if request is not None and is_current:  # the request goes on without that drafter
                self._unlink_drafter(request, failed=True)
                self._steer(request)
            return
        if request is None or not is_current or not 1 <= message.epoch <= request.epoch:
            self.metrics.num_stale_dropped += 1
            return
        self.metrics.num_drafts_forwarded += 1
        self._send(request.verifier, message)

    def _draft_problem(self, message: Draft) -> str | None:
        """Malformed trees stop here. The node bound is the verifier's: a living tree can pass `living_cap`
        by one growth step, and the verifier picks how many nodes it checks anyway."""
        return draft_problem(message, MAX_TREE_NODES if self.mode != "off" else 0, int(self.reference["vocab_size"]))

    def _finish(self, request: Request, reason: str, kept: list[int] | None = None, delta: str = "",
                logprobs: Logprobs | None = None, prompt_logprobs: Logprobs | None = None) -> None:
        """Step 5: the last chunk with the stats, then every worker frees the request."""
        request.finish(reason)
        request.stats.elapsed_s = self.clock() - request.started
        self._to_client(request.client, self._chunk(request, kept or [], delta, reason, request.stats.as_dict(),
                                                    logprobs, prompt_logprobs))
        self._release(request)
        self.metrics.num_finished += 1
        if reason == "cancelled":
            self.metrics.num_cancelled += 1

    def _fail(self, request: Request, code: str, message: str) -> None:
        """One Error for the client's request; its other samples end with it (the client stops listening)."""
        log.warning("request %s failed (%s): %s", request.request_id, code, message)
        self._to_client(request.client, Error(request.client_request_id, code, message))
        for sample in [request, *(s for s in self._samples(request.client_request_id) if s is not request)]:
            sample.finish(code)
            self._release(sample)
        self.metrics.num_errors += 1

    @staticmethod
    def _chunk(request: Request, kept: list[int], delta: str, reason: str | None = None,
               stats: dict[str, Any] | None = None, logprobs: Logprobs | None = None,
               prompt_logprobs: Logprobs | None = None) -> Chunk:
        return Chunk(request.client_request_id, kept, delta, reason, stats, request.index, logprobs, prompt_logprobs)

    def _samples(self, client_request_id: str) -> list[Request]:
        """Every live sample of a client's request (one unless it asked for n > 1)."""
        return [r for r in self.requests.values() if r.client_request_id == client_request_id]

    def _release(self, request: Request) -> None:
        for identity in (request.verifier, request.drafter):
            worker = self.pool.workers.get(identity) if identity else None
            if worker is not None:
                worker.requests.discard(request.request_id)
                self.outbox.append((worker.identity, Release(request.request_id), False))
        self.requests.pop(request.request_id, None)
        self._needs_dispatch = True

    # ---- drafters ----------------------------------------------------------------------------------

    def _adopt(self, request: Request, drafter: Worker) -> None:
        """A drafter takes over a running request that has none (its drafter died, or none was there).

        One that reads no features opens from the committed tokens at once; a Falcon drafter needs the
        target's features of every committed position, which the verifier sends first.
        """
        request.link_drafter(drafter.identity, awaits_features=drafter.needs_features)
        drafter.requests.add(request.request_id)
        if not drafter.needs_features:
            request.drafter_opened()
            self._send(drafter.identity, Open(request.request_id, request.epoch, list(request.committed)))
        self._steer(request, send_features=drafter.needs_features)

    def _open_drafter(self, request: Request, message: Committed) -> None:
        if request.drafter is not None:
            request.drafter_opened()
            self._send(request.drafter, Open(request.request_id, request.epoch, list(request.committed),
                                             message.features))

    def _steer(self, request: Request, send_features: bool = False) -> None:
        if request.verifier is not None:
            self._send(request.verifier, Steer(request.request_id, self._verifier_mode(request),
                                               self._wants_features(request), send_features))

    def _verifier_mode(self, request: Request) -> str:
        """The deployment's mode; without a drafter, async (the verifier's own prompt lookup, never a wait)."""
        if self.mode == "off" or request.drafter is not None:
            return self.mode
        return "async"

    def _wants_features(self, request: Request) -> bool:
        drafter = self.pool.workers.get(request.drafter) if request.drafter else None
        return drafter is not None and drafter.needs_features

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
        self._needs_dispatch = True

    def _on_worker_lost(self, worker: Worker) -> None:
        self._needs_dispatch = True
        for request in [self.requests[r] for r in worker.requests if r in self.requests]:
            if worker.role == "drafter":  # verifier-only until a drafter adopts it
                request.unlink_drafter()
                self._steer(request)
            else:  # the committed tokens are safe here: a new verifier re-prefills and the request goes on
                if request.drafter is not None and not request.is_drafter_open:
                    self._unlink_drafter(request)  # it never opened: adopt afresh once running again
                request.lose_verifier()

    def _on_failed(self, worker: Worker, message: Failed) -> None:
        request = self.requests.get(message.request_id)
        if message.code in ("stale_epoch", "unknown_request") or request is None \
                or worker.identity not in (request.verifier, request.drafter):  # not this worker's request
            self.metrics.num_stale_dropped += 1
        elif worker.role == "drafter":
            log.warning("drafter failed on %s (%s): %s; going on verifier-only", message.request_id, message.code,
                        message.message)
            self._unlink_drafter(request, failed=True)
            self._steer(request)
        elif request.verifier == worker.identity:
            self._fail(request, message.code, message.message)
        else:
            self.metrics.num_stale_dropped += 1

    def _unlink_drafter(self, request: Request, failed: bool = False) -> None:
        drafter = self.pool.workers.get(request.drafter) if request.drafter else None
        if drafter is not None:
            drafter.requests.discard(request.request_id)
            self.outbox.append((drafter.identity, Release(request.request_id), False))
        request.unlink_drafter(failed)

    def _on_unknown_worker(self, identity: bytes, message: Message) -> None:
        """Restarted coordinator, or a worker dropped after a stall: whatever it sends is stale until it says Hello."""
        self.metrics.num_stale_dropped += 1
        log.info("dropped %s from unknown worker %r: asked it to say Hello", message.TYPE, identity)
        self.outbox.append((identity, Refused(identity.decode(errors="replace"), UNKNOWN_WORKER), False))

    # ---- helpers -----------------------------------------------------------------------------------

    def _send(self, identity: bytes | None, message: Message) -> None:
        if identity is not None:
            self.outbox.append((identity, message, False))

    def _to_client(self, client: bytes, message: Message) -> None:
        self.outbox.append((client, message, True))

    def metrics_snapshot(self) -> dict[str, Any]:
        workers = [{"identity": w.identity.decode(errors="replace"), "role": w.role, "device": w.device, "pid": w.pid,
                    "num_requests": len(w.requests),
                    "worker_num_requests": w.stats.get("num_requests"),  # the worker's own count (heartbeat)
                    "free_slots": w.stats.get("free_slots")}  # a verifier's free KV-cache slots
                   for w in self.pool.workers.values()]
        queued = sum(r.phase is Phase.QUEUED for r in self.requests.values())
        return self.metrics.snapshot(len(self.requests) - queued, queued, workers)

"""The drafter's message handler: one living tree per request, grown between messages.

Async mode streams: every step grows every living tree (all requests in one drafter forward), and each
grown tree goes out whole as a `Draft` tagged with the epoch it was built on; the verifier keeps the
newest and re-roots it along whatever it committed since, so nobody waits for anybody. Sync mode drafts
once per `Open` / `Commit` (every due request in the same forwards) and sends one snapshot for that
epoch. `handle(message)` and `step()` have no socket code.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from protocol.errors import ProtocolError, RequestError
from protocol.messages import PROTOCOL_VERSION, Commit, Draft, Failed, Hello, Message, Open, Release
from protocol.trace import tracer
from workers.cost_model import VerifyCost, choose_num_expansions
from workers.drafters.base import Drafter, DraftSession, draft_many
from workers.elastic import SpeculationGate
from workers.tree import DraftTree
from workers.verifier_worker import fingerprint
from workers.wire import from_blob, tree_blobs


@dataclass
class _Request:
    session: DraftSession
    epoch: int
    owes_draft: bool = True  # sync: a draft for this epoch is due
    can_grow: bool = True  # async: the living tree is not full yet
    last_grown: int = 0  # step count when it last grew (round-robin among equals)


class DrafterWorker:
    role = "drafter"

    def __init__(self, drafter: Drafter, tree: Any, mode: str, worker_id: str, device: str = "cpu",
                 vocab_size: int = 0, hidden_size: int = 0, tokenizer_hash: str = "", model_name: str = "",
                 max_batch: int = 64, disable_at: int = 0) -> None:
        self.drafter, self.tree, self.mode, self.worker_id, self.device = drafter, tree, mode, worker_id, device
        self.max_batch = max(1, max_batch)  # requests whose trees grow in one step
        self.info = fingerprint(vocab_size, hidden_size, tokenizer_hash, model_name)
        self.requests: dict[str, _Request] = {}
        # under load the drafter idles and only follows the commits
        self.gate = SpeculationGate(disable_at)  # the verifier's rule on the same count (workers/elastic.py)
        self._turn = 0
        self.compute_s = 0.0
        self.counters = {"num_drafts_sent": 0, "num_grow_steps": 0, "num_commits": 0, "num_reroot_hits": 0,
                         "num_prunes": 0, "num_nodes_pruned": 0}
        self.step_cost = VerifyCost(max(int(getattr(tree, "top_k", 1)), 1))  # seconds of a step by leaves expanded

    def hello(self) -> Hello:
        return Hello(self.worker_id, self.role, PROTOCOL_VERSION, self.device, self.info,
                     needs_features=self.drafter.needs_features, pid=os.getpid())

    def stats(self) -> dict[str, Any]:
        return {"num_requests": len(self.requests), "compute_s": self.compute_s,
                "speculation_paused": int(self.gate.is_shut), "num_speculation_pauses": self.gate.num_shut,
                **self.counters}

    def handle(self, message: Message) -> list[Message]:
        request_id = getattr(message, "request_id", "")
        try:
            if isinstance(message, Open):
                self._open(message)
            elif isinstance(message, Commit):
                return self._commit(message)
            elif isinstance(message, Release):
                request = self.requests.pop(message.request_id, None)
                if request is not None:
                    request.session.release()
            else:
                return [Failed(request_id, "unexpected", f"a drafter does not handle {message.TYPE!r} messages")]
        except (RequestError, ProtocolError, ValueError) as err:
            return [Failed(request_id, "bad_request", str(err))]
        return []

    def _features(self, blob: Any) -> torch.Tensor | None:
        return from_blob(blob) if blob is not None and self.drafter.needs_features else None

    def _open(self, message: Open) -> None:
        old = self.requests.pop(message.request_id, None)
        if old is not None:
            old.session.release()
        session = self.drafter.open(message.committed_ids, self.tree, self._features(message.features))
        self.requests[message.request_id] = _Request(session, message.epoch)

    def _commit(self, message: Commit) -> list[Message]:
        request = self.requests.get(message.request_id)
        if request is None:
            return [Failed(message.request_id, "unknown_request", f"drafter has no request {message.request_id!r}")]
        if message.epoch != len(request.session.committed_ids) + len(message.token_ids):
            return [Failed(message.request_id, "stale_epoch", f"commit to epoch {message.epoch} does not follow "
                           f"{len(request.session.committed_ids)} + {len(message.token_ids)} tokens")]
        start = time.perf_counter()
        with tracer.span("drafter_commit", request=message.request_id):
            is_hit = request.session.commit(message.token_ids, self._features(message.features))
        self.compute_s += time.perf_counter() - start
        self.counters["num_commits"] += 1
        self.counters["num_reroot_hits"] += int(is_hit)
        request.epoch, request.owes_draft, request.can_grow = message.epoch, True, True
        return []

    def has_work(self) -> bool:
        self.gate.update(len(self.requests))
        if self.gate.is_shut:  # due drafts wait; commits keep every session current meanwhile
            return False
        if self.mode == "sync":
            return any(r.owes_draft for r in self.requests.values())
        return any(r.can_grow for r in self.requests.values())

    def step(self) -> list[Message]:
        """Sync: answer every due draft. Async: grow every living tree one step. Either way in one forward
        for all of them (a drafter with a model batches its sessions' steps: workers/drafters/batched.py)."""
        start = time.perf_counter()
        try:
            if self.mode == "sync":
                return self._sync_drafts()
            return self._grow_all()
        finally:
            self.compute_s += time.perf_counter() - start

    def _sync_drafts(self) -> list[Message]:
        due = [(rid, r) for rid, r in self.requests.items() if r.owes_draft][: self.max_batch]
        sessions = [r.session for _, r in due]
        steps = sum(s.num_draft_steps for s in sessions)
        with tracer.span("draft_step", rows=len(due), mode="sync"):
            trees = draft_many(sessions, self.drafter.grow_many)
        self.counters["num_grow_steps"] += sum(s.num_draft_steps for s in sessions) - steps
        for _, request in due:
            request.owes_draft = False
        return [self._draft(rid, r, tree) for (rid, r), tree in zip(due, trees, strict=True)]

    def _grow_all(self) -> list[Message]:
        """One step for every growable tree (up to `max_batch`, smallest trees first: a fresh miss needs
        nodes most; round-robin among equals), and each grown tree goes out."""
        growable = [(rid, r) for rid, r in self.requests.items() if r.can_grow]
        if not growable:
            return []
        self._turn += 1
        growable.sort(key=lambda item: (item[1].session.tree.num_nodes, item[1].last_grown))
        chosen = growable[: self.max_batch]
        for _, request in chosen:  # a full tree drops its least likely leaves rather than stop (tree.prune_living)
            size = request.session.tree.num_nodes
            if request.session.make_room():
                self.counters["num_prunes"] += 1
                self.counters["num_nodes_pruned"] += size - request.session.tree.num_nodes
        expansions = self._expansions([r.session for _, r in chosen])
        start = time.perf_counter()
        with tracer.span("draft_step", rows=len(chosen), nodes=sum(r.session.tree.num_nodes for _, r in chosen),
                         expansions=max(expansions)):
            grown = self.drafter.grow_many([r.session for _, r in chosen], expansions)
        elapsed = time.perf_counter() - start
        replies: list[Message] = []
        for (request_id, request), ok in zip(chosen, grown, strict=True):
            request.last_grown, request.can_grow = self._turn, ok
            if ok:
                replies.append(self._draft(request_id, request, request.session.tree))
        if replies:
            self.step_cost.observe(max(expansions), len(chosen), elapsed)
            self.counters["num_grow_steps"] += 1
        return replies

    def _expansions(self, sessions: list[DraftSession]) -> list[int]:
        """How many leaves each session's part of the next step expands: the most value per second.

        Step time is measured by (rows, expansions): a step with few expansions is cheaper on some
        devices and not on others, and rows cost more on a CPU than on a GPU (measure, never assume).
        Every count is measured once first at this row count; then each session takes the count that
        maximises the summed path probability of its expanded leaves over the step's cost.
        """
        rows = len(sessions)
        measured = self.step_cost.cells.get(VerifyCost.band(rows), {})
        values = [session.expansion_values() for session in sessions]
        limits = [max(min(v.numel(), self.step_cost.max_nodes), 1) for v in values]
        unmeasured = [e for e in range(1, max(limits) + 1) if e not in measured]
        if unmeasured:
            return [min(unmeasured[0], limit) for limit in limits]
        table = self.step_cost.table(rows)
        return [choose_num_expansions(v[:limit], table[1: limit + 1]) for v, limit in zip(values, limits, strict=True)]

    def _draft(self, request_id: str, request: _Request, tree: DraftTree) -> Draft:
        self.counters["num_drafts_sent"] += 1
        token_ids, parents, probs = tree_blobs(tree)
        return Draft(request_id, request.epoch, request.session.root_token, token_ids, parents, probs)

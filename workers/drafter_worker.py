"""The drafter's message handler: one living tree per request, grown between messages.

On `Open` / `Commit` a request wants a snapshot for its new epoch; `step()` answers those first and,
in async mode, spends idle time growing living trees so the next snapshot is ready at a re-root.
`handle(message)` and `step()` have no socket code.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch

from protocol.errors import ProtocolError, RequestError
from protocol.messages import PROTOCOL_VERSION, Commit, Draft, Failed, Hello, Message, Open, Release
from workers.drafters.base import Drafter, DraftSession
from workers.verifier_worker import fingerprint
from workers.wire import from_blob, tree_blobs


@dataclass
class _Request:
    session: DraftSession
    epoch: int
    wants_snapshot: bool = True
    can_grow: bool = True


class DrafterWorker:
    role = "drafter"

    def __init__(self, drafter: Drafter, tree: Any, mode: str, worker_id: str, device: str = "cpu",
                 vocab_size: int = 0, hidden_size: int = 0, tokenizer_hash: str = "", model_name: str = "") -> None:
        self.drafter, self.tree, self.mode, self.worker_id, self.device = drafter, tree, mode, worker_id, device
        self.info = fingerprint(vocab_size, hidden_size, tokenizer_hash, model_name)
        self.requests: dict[str, _Request] = {}
        self._turn = 0
        self.counters = {"num_snapshots": 0, "num_background_steps": 0, "num_commits": 0, "num_reroot_hits": 0}

    def hello(self) -> Hello:
        return Hello(self.worker_id, self.role, PROTOCOL_VERSION, self.device, self.info,
                     needs_features=self.drafter.needs_features, pid=os.getpid())

    def stats(self) -> dict[str, Any]:
        return {"num_requests": len(self.requests), **self.counters}

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
        session = self.drafter.open(message.committed_ids, self.tree, self._features(message.features))
        self.requests[message.request_id] = _Request(session, message.epoch)

    def _commit(self, message: Commit) -> list[Message]:
        request = self.requests.get(message.request_id)
        if request is None:
            return [Failed(message.request_id, "unknown_request", f"drafter has no request {message.request_id!r}")]
        if message.epoch != len(request.session.committed_ids) + len(message.token_ids):
            return [Failed(message.request_id, "stale_epoch", f"commit to epoch {message.epoch} does not follow "
                           f"{len(request.session.committed_ids)} + {len(message.token_ids)} tokens")]
        is_hit = request.session.commit(message.token_ids, self._features(message.features))
        self.counters["num_commits"] += 1
        self.counters["num_reroot_hits"] += int(is_hit)
        request.epoch, request.wants_snapshot, request.can_grow = message.epoch, True, True
        return []

    def has_work(self) -> bool:
        return any(r.wants_snapshot or (self.mode == "async" and r.can_grow) for r in self.requests.values())

    def step(self) -> list[Message]:
        """Answer every pending snapshot request; otherwise grow one living tree by one step (async)."""
        wanting = [(rid, r) for rid, r in self.requests.items() if r.wants_snapshot]
        if wanting:
            return [self._snapshot(rid, r) for rid, r in wanting]
        if self.mode == "async":
            self._grow_one()
        return []

    def _snapshot(self, request_id: str, request: _Request) -> Draft:
        session = request.session
        if self.mode == "sync":
            tree = session.draft()
        else:  # async: a re-rooted subtree goes out at once; after a miss, grow as sync would
            budget = math.ceil(self.tree.depth / session.tokens_per_step) if session.tree.num_nodes == 0 else 0
            while request.can_grow and budget > 0 and session.tree.max_depth < self.tree.depth:
                request.can_grow = session.grow()
                budget -= 1
            tree = session.snapshot()
        request.wants_snapshot = False
        self.counters["num_snapshots"] += 1
        token_ids, parents, probs = tree_blobs(tree)
        return Draft(request_id, request.epoch, session.root_token, token_ids, parents, probs)

    def _grow_one(self) -> None:
        growable = [r for r in self.requests.values() if r.can_grow]
        if not growable:
            return
        request = growable[self._turn % len(growable)]
        self._turn += 1
        request.can_grow = request.session.grow()
        self.counters["num_background_steps"] += int(request.can_grow)

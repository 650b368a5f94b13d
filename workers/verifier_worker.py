"""The verifier's message handler: prefill, verify drafts, keep one target cache per request.

`handle(message)` has no socket code: the same object runs in a worker process and in-process.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

from protocol.errors import ProtocolError, RequestError
from protocol.messages import PROTOCOL_VERSION, Committed, Draft, Failed, Hello, Message, Prefill, Release
from workers.sampling import SamplingParams, choose_tokens
from workers.target import TargetVerifier, VerifierState
from workers.verification import committed_features, verify_and_accept
from workers.wire import to_blob, tree_from_blobs


@dataclass
class _Request:
    state: VerifierState
    params: SamplingParams
    max_tree_nodes: int


class VerifierWorker:
    role = "verifier"

    def __init__(self, target: TargetVerifier, worker_id: str, tokenizer_hash: str = "", model_name: str = "") -> None:
        self.target = target
        self.worker_id = worker_id
        self.tokenizer_hash = tokenizer_hash
        self.model_name = model_name
        self.requests: dict[str, _Request] = {}
        self.compute_s = 0.0
        self.num_verifications = 0

    def hello(self) -> Hello:
        return Hello(self.worker_id, self.role, PROTOCOL_VERSION, str(self.target.device),
                     fingerprint(self.target.vocab_size, self.target.hidden_size, self.tokenizer_hash, self.model_name),
                     pid=os.getpid())

    def stats(self) -> dict[str, Any]:
        return {"num_requests": len(self.requests), "compute_s": self.compute_s,
                "num_verifications": self.num_verifications}

    def has_work(self) -> bool:
        return False  # the verifier only reacts to messages

    def step(self) -> list[Message]:
        return []

    def handle(self, message: Message) -> list[Message]:
        request_id = getattr(message, "request_id", "")
        try:
            if isinstance(message, Prefill):
                return [self._prefill(message)]
            if isinstance(message, Draft):
                return [self._verify(message)]
            if isinstance(message, Release):
                self.requests.pop(message.request_id, None)
                return []
        except (RequestError, ProtocolError, ValueError) as err:
            return [Failed(request_id, "bad_request", str(err))]
        return [Failed(request_id, "unexpected", f"a verifier does not handle {message.TYPE!r} messages")]

    def _prefill(self, message: Prefill) -> Committed:
        start = time.perf_counter()
        params = SamplingParams(**message.sampling)
        request = _Request(VerifierState(), params, message.max_tree_nodes)
        logits, features = self.target.prefill(request.state, message.token_ids)
        self.requests[message.request_id] = request
        tokens: list[int] = []
        if message.sample_next:
            position = torch.tensor([len(message.token_ids)])
            tokens = [int(choose_tokens(logits[None], params, position)[0])]
        return self._committed(message.request_id, message.epoch, tokens, 0,
                               features if message.want_features else None, start)

    def _verify(self, message: Draft) -> Committed | Failed:
        request = self.requests.get(message.request_id)
        if request is None:
            return Failed(message.request_id, "unknown_request", f"no prefill for request {message.request_id!r}")
        if message.epoch != request.state.length + 1:
            return Failed(message.request_id, "stale_epoch",
                          f"draft for epoch {message.epoch}, cache is at {request.state.length + 1}")
        start = time.perf_counter()
        tree = tree_from_blobs(message.token_ids, message.parents, message.probs)
        path, bonus, hidden = verify_and_accept(self.target, request.state, message.epoch, message.root, tree,
                                                request.params, request.max_tree_nodes)
        tokens = [*tree.token_ids[path].tolist(), bonus]
        self.num_verifications += 1
        features = committed_features(hidden, path) if message.want_features else None
        return self._committed(message.request_id, message.epoch, tokens, tree.max_depth, features, start)

    def _committed(self, request_id: str, epoch: int, tokens: list[int], depth: int,
                   features: torch.Tensor | None, start: float) -> Committed:
        elapsed = time.perf_counter() - start
        self.compute_s += elapsed
        blob = to_blob(features.float()) if features is not None else None
        return Committed(request_id, epoch, tokens, depth, blob, elapsed)


def fingerprint(vocab_size: int, hidden_size: int, tokenizer_hash: str, model_name: str) -> dict[str, Any]:
    return {"vocab_size": vocab_size, "hidden_size": hidden_size, "tokenizer_hash": tokenizer_hash,
            "model": model_name}


def tokenizer_hash(model_dir: str) -> str:
    """Hash of the tokenizer files in a checkpoint directory ('' when there are none)."""
    digest = hashlib.sha256()
    found = False
    for name in ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer.model"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            found = True
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16] if found else ""

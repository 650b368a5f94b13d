"""The verifier's message handler: it drives every request it holds, one verification after another.

`handle(message)` takes prefills, the drafter's trees (forwarded by the coordinator), steering and
releases; `step()` runs one verification of the next runnable request: choose the nodes that pay
(workers/cost_model.py), one tree forward, acceptance, KV compaction, re-root the held tree, and a
`Committed` for the coordinator. No socket code: the same object runs in a process and in-process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import Any, NamedTuple

import torch

from protocol.errors import ProtocolError, RequestError
from protocol.messages import (
    PROTOCOL_VERSION,
    Committed,
    Draft,
    Failed,
    Hello,
    Message,
    Prefill,
    Release,
    Steer,
)
from protocol.params import SamplingParams
from protocol.trace import tracer
from workers.cost_model import VerifyCost, best_first_order, choose_num_nodes, make_acceptance
from workers.drafters.ngram import find_continuations, trie_from_rows
from workers.sampling import choose_tokens
from workers.target import TargetVerifier, VerifierState
from workers.tree import DraftTree
from workers.verification import committed_features, verify_and_accept
from workers.verifier_request import VerifierRequest
from workers.wire import to_blob

log = logging.getLogger(__name__)


class Choice(NamedTuple):
    tree: DraftTree  # the nodes to verify (a prefix of the held tree in best-first order)
    rate: float  # expected committed tokens per second
    held_index: torch.Tensor  # their indices in the held tree
EXPLORE_EVERY = 32  # after this many verifications without a node, verify the best one anyway
LOOKUP_MAX_NGRAM, LOOKUP_MIN_NGRAM, LOOKUP_DEPTH, LOOKUP_MATCHES = 3, 1, 10, 4  # the verifier's own prompt lookup


class VerifierWorker:
    role = "verifier"

    def __init__(self, target: TargetVerifier, worker_id: str, tokenizer_hash: str = "", model_name: str = "",
                 acceptance: str = "calibrated", max_tree_nodes: int = 64, local_lookup: bool = True) -> None:
        self.target = target
        self.worker_id = worker_id
        self.tokenizer_hash = tokenizer_hash
        self.model_name = model_name
        self.requests: dict[str, VerifierRequest] = {}
        self.cost = VerifyCost(max_tree_nodes)
        # estimates per (greedy?, tree source): a drafter's trees and the verifier's own lookups differ
        self.acceptance = {(greedy, source): make_acceptance(acceptance)
                           for greedy in (True, False) for source in ("drafter", "lookup")}
        self.local_lookup = local_lookup
        self.compute_s = 0.0
        self.counters = {"num_verifications": 0, "num_drafts": 0, "num_drafts_dropped": 0, "num_nodes_verified": 0,
                         "num_drafts_malformed": 0, "num_lookups": 0}
        self._order: list[str] = []  # round-robin order of request ids
        self._verified_index = torch.zeros(0, dtype=torch.long)  # of the last _choose, in the held tree

    def hello(self) -> Hello:
        return Hello(self.worker_id, self.role, PROTOCOL_VERSION, str(self.target.device),
                     fingerprint(self.target.vocab_size, self.target.hidden_size, self.tokenizer_hash, self.model_name),
                     pid=os.getpid())

    def stats(self) -> dict[str, Any]:
        return {"num_requests": len(self.requests), "compute_s": self.compute_s, **self.counters}

    # ---- start-up ------------------------------------------------------------------------------------

    def calibrate(self, context: int = 128, sizes: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64),
                  repeats: int = 3) -> dict[int, float]:
        """Measure t(n) on chain trees after a random prefix of `context` tokens (best of `repeats`)."""
        generator = torch.Generator().manual_seed(0)
        context = max(2, min(context, self.target.max_positions // 2))
        prompt = torch.randint(0, self.target.vocab_size, (context,), generator=generator).tolist()
        state = VerifierState()
        self.target.prefill(state, prompt[:-1])
        measured: dict[int, float] = {}
        for n in (s for s in sizes if s <= self.cost.max_nodes):
            tree = DraftTree.from_lists(prompt[:n] if n <= context else [0] * n, list(range(-1, n - 1)), [0.5] * n)
            best = float("inf")
            for _ in range(repeats + 1):  # the first run warms up
                start = time.perf_counter()
                self.target.verify(state, prompt[-1], tree)
                self.target.accept(state, torch.zeros(0, dtype=torch.long))
                best = min(best, time.perf_counter() - start)
                self.target.rollback(state, context - 1)
            measured[n] = best
            self.cost.observe(n, context, best)
        log.info("verify cost at context %d: %s", context,
                 ", ".join(f"t({n})={s * 1e3:.1f} ms" for n, s in measured.items()))
        return measured

    # ---- messages ------------------------------------------------------------------------------------

    def handle(self, message: Message) -> list[Message]:
        request_id = getattr(message, "request_id", "")
        try:
            if isinstance(message, Prefill):
                return [self._prefill(message)]
            if isinstance(message, Draft):
                self._offer(message)
                return []
            if isinstance(message, Steer):
                return self._steer(message)
            if isinstance(message, Release):
                self.requests.pop(message.request_id, None)
                return []
        except (RequestError, ProtocolError, ValueError) as err:
            return [Failed(request_id, "bad_request", str(err))]
        return [Failed(request_id, "unexpected", f"a verifier does not handle {message.TYPE!r} messages")]

    def _prefill(self, message: Prefill) -> Committed:
        start = time.perf_counter()
        params = SamplingParams(**message.sampling)
        if not message.token_ids:
            raise RequestError("prefill needs at least one token")
        cached = message.token_ids if message.sample_next else message.token_ids[:-1]
        state = VerifierState()
        logits, features = self.target.prefill(state, cached) if cached else (None, None)
        request = VerifierRequest(state, params, list(message.token_ids), min(message.max_tree_nodes,
                                  self.cost.max_nodes), message.mode, message.want_features,
                                  message.max_length, frozenset(message.stop_token_ids))
        request.is_fresh = not message.sample_next  # a resync: no draft is owed, so sync mode steps once alone
        self.requests[message.request_id] = request
        if message.request_id not in self._order:
            self._order.append(message.request_id)
        tokens: list[int] = []
        if message.sample_next:
            assert logits is not None
            position = torch.tensor([len(message.token_ids)])
            tokens = [int(choose_tokens(logits[None], params, position)[0])]
            request.commit(tokens)
        send = features if message.want_features and features is not None else None
        return self._committed(message.request_id, message.epoch, tokens, 0, 0, send, start)

    def _offer(self, message: Draft) -> None:
        request = self.requests.get(message.request_id)
        if request is None:  # released, or never prefilled here: nothing to apply it to
            self.counters["num_drafts_dropped"] += 1
            return
        self.counters["num_drafts"] += 1
        if request.mode != "off":
            request.receive(message)

    def _steer(self, message: Steer) -> list[Message]:
        request = self.requests.get(message.request_id)
        if request is None:
            return [Failed(message.request_id, "unknown_request", f"no prefill for request {message.request_id!r}")]
        request.steer(message.mode, message.want_features)
        if not message.send_features:
            return []
        start = time.perf_counter()
        _, features = self.target.prefill(VerifierState(), request.committed[:-1])  # a throwaway cache
        return [self._committed(message.request_id, request.epoch, [], 0, 0, features, start)]

    # ---- verification --------------------------------------------------------------------------------

    def has_work(self) -> bool:
        return any(r.is_runnable for r in self.requests.values())

    def step(self) -> list[Message]:
        """One verification of the runnable request that waited longest."""
        self._order = [r for r in self._order if r in self.requests]
        request_id = next((r for r in self._order if self.requests[r].is_runnable), None)
        if request_id is None:
            return []
        self._order.remove(request_id)
        self._order.append(request_id)
        request = self.requests[request_id]
        try:
            return [self._verify(request_id, request)]
        except (RequestError, ProtocolError, ValueError) as err:  # e.g. the model's context is full
            request.is_stopped = True
            return [Failed(request_id, "bad_request", str(err))]

    def _verify(self, request_id: str, request: VerifierRequest) -> Committed:
        start = time.perf_counter()
        epoch, context = request.epoch, request.state.length
        with tracer.span("choose"):
            tree = self._choose(request)
        with tracer.span("verify", request=request_id, nodes=tree.num_nodes, held=request.tree.num_nodes,
                         context=context):
            path, bonus, hidden = verify_and_accept(self.target, request.state, epoch, request.committed[-1], tree,
                                                    request.params)
        tokens = [*tree.token_ids[path].tolist(), bonus]
        with tracer.span("learn"):
            self._learn(request.tree, tree, tokens, (request.params.is_greedy, request.tree_source))
            is_hit = request.commit(tokens)
            features = committed_features(hidden, path) if request.want_features else None
        self.counters["num_verifications"] += 1
        self.counters["num_nodes_verified"] += tree.num_nodes
        reply = self._committed(request_id, epoch, tokens, tree.max_depth, tree.num_nodes, features, start, is_hit)
        self.cost.observe(tree.num_nodes, context, reply.compute_s)
        return reply

    def _learn(self, held: DraftTree, verified: DraftTree, tokens: list[int], key: tuple[bool, str]) -> None:
        """Feed the acceptance estimates every verdict this verification settled, verified or not.

        A held node at depth <= len(tokens) would have been accepted exactly when it lies on the path the
        tokens spell (the target's choice at each position does not depend on the tree), so even a
        verification of no node teaches the estimates about depth 1. Verified nodes deeper than that
        were rejected (an ancestor was). Deeper unverified nodes are unknown and left out.
        """
        on_path = torch.zeros(held.num_nodes, dtype=torch.bool)
        on_path[held.follow(tokens)] = True
        known = held.depths <= len(tokens)
        if verified.num_nodes:  # the verified nodes are the first ones of the held tree's best-first order
            deeper = torch.zeros(held.num_nodes, dtype=torch.bool)
            deeper[self._verified_index] = True
            known |= deeper
        index = torch.nonzero(known).flatten()
        if index.numel():
            self.acceptance[key].update(held.select(index), on_path[index])

    def _choose(self, request: VerifierRequest) -> DraftTree:
        """The prefix of the held tree (best nodes first) that maximises expected tokens per second.

        The verifier's own prompt lookup competes with the drafter's tree: whichever promises more
        tokens per second is verified (a useless drafter then costs nothing, and a repeating text
        speeds up even when the drafter's tree is worth a little).
        """
        problem = request.take_pending()
        if problem is not None:
            self.counters["num_drafts_malformed"] += 1
            log.warning("dropped a malformed draft: %s", problem)
        if request.mode == "off" or request.max_tree_nodes == 0:
            return DraftTree.empty()
        costs = self.cost.table(request.state.length)
        best = self._best_prefix(request, costs)
        if self.local_lookup:  # a fresh lookup, also when the held tree is an older (used-up) lookup
            held = (request.tree, request.tree_source)
            if self._look_up(request):
                lookup = self._best_prefix(request, costs)
                if lookup.rate > best.rate:
                    best = lookup
                else:
                    request.tree, request.tree_source = held
        self._verified_index = best.held_index
        if best.tree.num_nodes == 0 and request.tree.num_nodes:
            request.num_empty_choices += 1
            if request.num_empty_choices % EXPLORE_EVERY == 0:  # keep the estimates honest: a drafter
                return self._prefix(request, 1)  # that got better must be able to show it
        return best.tree

    def _best_prefix(self, request: VerifierRequest, costs: list[float]) -> Choice:
        """The best prefix of the held tree and its expected tokens per second (per the cost model)."""
        held = request.tree
        if held.num_nodes == 0:
            return Choice(held, 1.0 / costs[0], torch.zeros(0, dtype=torch.long))
        estimates = self.acceptance[(request.params.is_greedy, request.tree_source)].estimate(held)
        order = best_first_order(estimates)
        limit = min(request.max_tree_nodes, held.num_nodes)
        sorted_estimates = estimates[order][:limit]
        # nothing measured yet: verify what the budget allows
        num = choose_num_nodes(sorted_estimates, costs[: limit + 1]) if self.cost.is_known else limit
        rate = (1.0 + float(sorted_estimates[:num].sum())) / costs[num]
        return Choice(held.reorder(order).prefix(num), rate, order[:num])

    def _prefix(self, request: VerifierRequest, num: int) -> DraftTree:
        estimates = self.acceptance[(request.params.is_greedy, request.tree_source)].estimate(request.tree)
        order = best_first_order(estimates)
        self._verified_index = order[:num]
        return request.tree.reorder(order).prefix(num)

    def _look_up(self, request: VerifierRequest) -> bool:
        """Draft from the request's own tokens (prompt lookup): it needs no model and no round trip, so a
        drafter's miss does not cost a verifier-only step when the text repeats. True if it found one."""
        rows = find_continuations(torch.tensor(request.committed), LOOKUP_MAX_NGRAM, LOOKUP_MIN_NGRAM,
                                  LOOKUP_DEPTH, LOOKUP_MATCHES)
        if not rows.numel():
            return False
        self.counters["num_lookups"] += 1
        request.tree, request.tree_source = trie_from_rows(rows), "lookup"
        return True

    def _committed(self, request_id: str, epoch: int, tokens: list[int], depth: int, num_nodes: int,
                   features: torch.Tensor | None, start: float, is_hit: bool = False) -> Committed:
        elapsed = time.perf_counter() - start
        self.compute_s += elapsed
        blob = to_blob(features.float()) if features is not None else None
        return Committed(request_id, epoch, tokens, depth, blob, elapsed, num_nodes, is_hit)


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

"""The verifier's message handler: it drives every request it holds, all of them in each forward.

`handle(message)` takes prefills, the drafter's trees (forwarded by the coordinator), steering and
releases; `step()` runs one batched step: either the next chunks of the prompts being prefilled, or
one verification of every runnable request (up to `max_batch`) in a single forward on the slot cache
(workers/slot_cache.py): choose each request's nodes so that the whole batch commits the most tokens
per second (workers/cost_model.py), one padded tree forward, per-row acceptance, one compaction of
every row, re-root each held tree, and one `Committed` per request. Prefill chunks and verifications
alternate, so a long new prompt never stalls the running requests for long. No socket code: the same
object runs in a process and in-process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from protocol.errors import ProtocolError, RequestError
from protocol.logprobs import Logprobs
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
from protocol.trace import now_us, tracer
from workers.batch_choice import Forest, Offer, Ranking, best_by_row, merge_offers, pick_offers, rank_offers
from workers.batch_cost import BatchCost
from workers.batch_verify import Verdict, VerifyJob, prefill_batch, prefill_guessing, verify_batch
from workers.compiled_forward import CompiledForward, bucket
from workers.cost_model import CalibratedAcceptance, choose_width, make_acceptance
from workers.drafters.ngram import trie_from_rows
from workers.elastic import CoreLease, SpeculationGate
from workers.hidden_source import HiddenSource
from workers.logprobs import committed_rows, prompt_logprobs, token_logprobs
from workers.lookup_index import LookupIndex
from workers.sampling import choose_tokens
from workers.slot_cache import CacheFullError, SlotCache
from workers.target import TargetVerifier, VerifierState
from workers.tree import DraftTree
from workers.verification import committed_features
from workers.verifier_request import PrefillProgress, VerifierRequest
from workers.wire import to_blob

log = logging.getLogger(__name__)


EXPLORE_EVERY = 32  # after this many verifications without a node, verify the best one anyway
LOOKUP_MAX_NGRAM, LOOKUP_MIN_NGRAM, LOOKUP_DEPTH, LOOKUP_MATCHES = 3, 1, 10, 4  # the verifier's own prompt lookup
CALIBRATION_WIDTHS = (1, 2, 3, 5, 9, 17, 33, 65)  # root + 0, 1, 2, 4, 8, 16, 32, 64 nodes
CALIBRATION_MAX_TOKENS = 1024  # rows x width beyond this are extrapolated, not measured


class VerifierWorker:
    role = "verifier"

    def __init__(self, target: TargetVerifier, worker_id: str, tokenizer_hash: str = "", model_name: str = "",
                 acceptance: str = "calibrated", max_tree_nodes: int = 64, local_lookup: bool = True,
                 max_running: int = 32, max_batch: int | None = None, max_length: int | None = None,
                 prefill_chunk: int = 256, compile_backend: str | Callable[..., Any] | None = None,
                 target_candidates: int = 0, hidden: HiddenSource | None = None, merge_sources: bool = True,
                 disable_at: int = 0, lease: CoreLease | None = None) -> None:
        self.target = target
        self.worker_id = worker_id
        self.tokenizer_hash = tokenizer_hash
        self.model_name = model_name
        self.requests: dict[str, VerifierRequest] = {}
        self.max_tree_nodes = max_tree_nodes
        self.max_batch = max(1, min(max_batch or max_running, max_running))
        self.prefill_chunk = prefill_chunk
        self.target_candidates = target_candidates  # MCSD's candidate roots (lossy); 0 = exact
        # a slot holds `capacity` committed tokens plus scratch for root + the largest tree
        self.capacity = min(max_length or target.max_positions, target.max_positions)
        self.hidden = hidden  # Hidden Transfer: pseudo slots in the verification forward (workers/hidden_source.py)
        width = max_tree_nodes + 1 + (hidden.max_columns if hidden else 0)  # root + the largest tree + slots
        if compile_backend is not None:  # a scratch slot for padding rows, room for a row padded to its bucket
            width = bucket(width)
        self.cache = SlotCache.for_model(target.config, max_running + int(compile_backend is not None),
                                         self.capacity + width, target.dtype, target.device)
        if compile_backend is not None:
            target.compiled = CompiledForward(target.decoder, self.cache, max_tree_nodes + 1, compile_backend)
        log.info("slot KV cache: %d slots x %d positions = %.1f MiB on %s", max_running, self.cache.max_len,
                 self.cache.nbytes / 2**20, target.device)
        self.cost = BatchCost(width)
        # estimates per (greedy?, tree source): a drafter's trees and the verifier's own lookups differ
        self.acceptance = {(greedy, source): make_acceptance(acceptance)
                           for greedy in (True, False) for source in ("drafter", "lookup", "hidden")}
        self.local_lookup = local_lookup
        self.merge_sources = merge_sources  # verify the union of a request's draft sources (False: the best one)
        # under load speculation steps aside: root-only verifications (with a lease, on the drafter's cores too)
        self.gate, self.lease = SpeculationGate(disable_at), lease
        self.compute_s = 0.0
        self.counters = {"num_verifications": 0, "num_drafts": 0, "num_drafts_dropped": 0, "num_nodes_verified": 0,
                         "num_drafts_malformed": 0, "num_lookups": 0, "num_batches": 0, "num_prefill_chunks": 0,
                         "num_failed": 0, "num_prefixes_shared": 0, "num_hidden_trees": 0,
                         "num_hidden_verifications": 0, "num_hidden_accepted": 0, "num_prefill_guesses": 0,
                         "num_paused_batches": 0}
        self._order: list[str] = []  # round-robin order of request ids
        self._prefill_turn = True  # prefill chunks and verifications alternate while both are due

    def hello(self) -> Hello:
        return Hello(self.worker_id, self.role, PROTOCOL_VERSION, str(self.target.device),
                     fingerprint(self.target.vocab_size, self.target.hidden_size, self.tokenizer_hash, self.model_name),
                     pid=os.getpid())

    def stats(self) -> dict[str, Any]:
        return {"num_requests": len(self.requests), "compute_s": self.compute_s, "free_slots": self.cache.num_free,
                "speculation_paused": int(self.gate.is_shut), "num_speculation_pauses": self.gate.num_shut,
                **self.counters}

    # ---- start-up ------------------------------------------------------------------------------------

    def calibrate(self, context: int = 128, widths: tuple[int, ...] = CALIBRATION_WIDTHS,
                  repeats: int = 2) -> dict[tuple[int, int], float]:
        """Measure t(B, W): batched verifications of B rows at width W after `context` random tokens."""
        generator = torch.Generator().manual_seed(0)
        context = max(2, min(context, self.capacity // 2))
        prompt = torch.randint(0, self.target.vocab_size, (context,), generator=generator).tolist()
        row_counts = sorted({min(2**i, self.max_batch) for i in range(self.max_batch.bit_length() + 1)})
        slots = [self.cache.allocate() for _ in range(min(self.cache.num_free, row_counts[-1]))]
        measured: dict[tuple[int, int], float] = {}
        try:
            prefill_batch(self.target, self.cache, slots[:1], [0], [prompt[:-1]])
            for tensor in (*self.cache.keys, *self.cache.values):  # every slot holds the same prefix
                tensor[slots[1:]] = tensor[slots[0]].clone()
            for rows in (r for r in row_counts if r <= len(slots)):
                for width in (w for w in widths if w <= self.cost.max_width):
                    if rows * width > CALIBRATION_MAX_TOKENS and width > 1:
                        continue
                    tree = DraftTree.from_lists(prompt[: width - 1], list(range(-1, width - 2)), [0.5] * (width - 1))
                    jobs = [VerifyJob(s, context - 1, prompt[-1], tree, SamplingParams()) for s in slots[:rows]]
                    best = float("inf")
                    for _ in range(repeats + 1):  # the first run warms up
                        for s in slots[:rows]:
                            self.cache.set_length(s, context - 1)
                        begin = time.perf_counter()
                        verify_batch(self.target, self.cache, jobs)
                        best = min(best, time.perf_counter() - begin)
                    measured[(rows, width)] = best
                    self.cost.calibrate(rows, width, best)
        finally:
            for s in slots:
                self.cache.release(s)
        log.info("verify cost at context %d: %s", context,
                 ", ".join(f"t({b}x{w})={s * 1e3:.1f} ms" for (b, w), s in measured.items()))
        return measured

    # ---- messages ------------------------------------------------------------------------------------

    def handle(self, message: Message) -> list[Message]:
        request_id = getattr(message, "request_id", "")
        try:
            if isinstance(message, Prefill):
                return self._prefill(message)
            if isinstance(message, Draft):
                self._offer(message)
                return []
            if isinstance(message, Steer):
                return self._steer(message)
            if isinstance(message, Release):
                self._release(message.request_id)
                return []
        except CacheFullError as err:
            return [Failed(request_id, "overloaded", str(err))]
        except (RequestError, ProtocolError, ValueError) as err:
            return [Failed(request_id, "bad_request", str(err))]
        except Exception as err:  # the boundary: fail this request, keep serving every other one
            log.exception("verifier failed on %s for %s", message.TYPE, request_id)
            self._release(request_id)
            return [Failed(request_id, "internal", f"verifier error: {type(err).__name__}: {err}")]
        return [Failed(request_id, "unexpected", f"a verifier does not handle {message.TYPE!r} messages")]

    def _release(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is not None:
            self.cache.release(request.slot)

    def _prefill(self, message: Prefill) -> list[Message]:
        params = SamplingParams(**message.sampling)
        if not message.token_ids:
            raise RequestError("prefill needs at least one token")
        self.target.check_prompt(message.token_ids)
        max_length = message.max_length or self.capacity
        if max_length > self.capacity or len(message.token_ids) > self.capacity:
            raise RequestError(f"the request needs {max(max_length, len(message.token_ids))} positions; a slot of "
                               f"this verifier holds {self.capacity} (verifier.max_length)")
        self._release(message.request_id)  # a resync rebuilds the slot from the committed tokens
        request = VerifierRequest(self.cache.allocate(), params, list(message.token_ids),
                                  min(message.max_tree_nodes, self.max_tree_nodes), message.mode,
                                  message.want_features, max_length, frozenset(message.stop_token_ids))
        request.is_fresh = not message.sample_next  # a resync: no draft is owed, so sync mode steps once alone
        request.num_logprobs = message.num_logprobs
        cached = message.token_ids if message.sample_next else message.token_ids[:-1]
        request.prefill = PrefillProgress(list(cached), message.epoch, message.sample_next,
                                          num_prompt_logprobs=message.num_prompt_logprobs)
        request.prefill.donor = self._donor(message, request)
        self.requests[message.request_id] = request
        if message.request_id not in self._order:
            self._order.append(message.request_id)
        if not cached:  # a one-token resync: nothing to cache
            return [self._prefilled(message.request_id, request)]
        return []

    def _donor(self, message: Prefill, request: VerifierRequest) -> str:
        """The sibling whose prompt this new request will copy once cached, or '' (prefill alone)."""
        donor = self.requests.get(message.prefix_from) if message.prefix_from else None
        if donor is None or donor.prefill is None or not message.sample_next \
                or donor.prefill.token_ids != message.token_ids or donor.want_features != request.want_features:
            return ""
        return message.prefix_from

    def _share_prompt(self, donor_id: str, donor: VerifierRequest, progress: PrefillProgress) -> None:
        """The donor's prompt is cached: every sibling waiting for it copies all but its last position
        (that one runs as the sibling's own one-token chunk, giving the state its first token is drawn from)."""
        for request in self.requests.values():
            waiting = request.prefill
            if waiting is None or waiting.donor != donor_id:
                continue
            waiting.donor = ""
            num = len(waiting.token_ids) - 1
            if waiting.done or num <= 0:
                continue
            self.cache.copy_prefix(donor.slot, request.slot, num)
            waiting.done = num
            if request.want_features:
                waiting.features = [torch.cat(progress.features)[:num]]
            self.counters["num_prefixes_shared"] += 1

    def _waits(self, progress: PrefillProgress) -> bool:
        """A sibling waits while its donor is still prefilling; a donor gone or failed: it prefills alone."""
        donor = self.requests.get(progress.donor) if progress.donor else None
        if donor is None or donor.prefill is None:
            progress.donor = ""
            return False
        return True

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
        return [self._committed(message.request_id, request.epoch, [], 0, 0, features, time.perf_counter() - start)]

    # ---- steps ---------------------------------------------------------------------------------------

    def has_work(self) -> bool:
        paused = self._is_paused()
        return any(r.prefill is not None or r.can_verify(paused) for r in self.requests.values())

    def _is_paused(self) -> bool:
        """Is speculation shut for the requests held now? Moves the verifier's cores with the gate.

        It counts the prefilled requests: those the drafter holds too (the coordinator opens a request on
        the drafter once its prefill is done, and releases it on both), so both gates move together."""
        count = sum(r.prefill is None for r in self.requests.values()) if self.gate.disable_at else 0
        if self.gate.update(count):
            tracer.complete("speculation_paused" if self.gate.is_shut else "speculation_resumed", now_us(), 0.0,
                            requests=count)
            if self.lease is not None:
                self.lease.take() if self.gate.is_shut else self.lease.give_back()
        return self.gate.is_shut

    def step(self) -> list[Message]:
        """One batched step: the next prompt chunks, or one verification of every runnable request.

        While both are due they alternate (vLLM's chunked prefill, as separate forwards): a new prompt
        costs the running requests at most one chunk's forward between two of their verifications.
        """
        self._order = [r for r in self._order if r in self.requests]
        paused = self._is_paused()  # then every running request verifies root-only, waiting for no draft
        prefilling = [r for r in self._order if self.requests[r].prefill is not None]
        runnable = [r for r in self._order if self.requests[r].can_verify(paused)]
        if prefilling and (self._prefill_turn or not runnable):
            self._prefill_turn = False
            return self._prefill_step(prefilling)
        self._prefill_turn = True
        if not runnable:
            return []
        chosen = runnable[: self.max_batch]
        for request_id in chosen:  # round-robin: those verified now go to the back
            self._order.remove(request_id)
            self._order.append(request_id)
        return self._verify_step(chosen, paused)

    def _prefill_step(self, request_ids: list[str]) -> list[Message]:
        """Cache up to `prefill_chunk` prompt tokens, first come first served, in one forward."""
        start = time.perf_counter()
        budget, rows = self.prefill_chunk, []
        for request_id in request_ids:
            progress = self.requests[request_id].prefill
            assert progress is not None
            if self._waits(progress):
                continue
            take = min(progress.remaining, budget)
            if take <= 0:
                break
            rows.append((request_id, progress, take))
            budget -= take
        replies: list[Message] = []
        if not rows:
            return replies
        anchors = [self._prefill_anchors(self.requests[r], p, take) for r, p, take in rows]
        slots, starts = [self.requests[r].slot for r, _, _ in rows], [p.done for _, p, _ in rows]
        chunks = [p.token_ids[p.done: p.done + take] for _, p, take in rows]
        try:
            with tracer.span("prefill", rows=len(rows), tokens=self.prefill_chunk - budget):
                if self.hidden is not None and any(anchors):
                    hidden, guesses = prefill_guessing(self.target, self.cache, slots, starts, chunks,
                                                       self.hidden.maps, anchors)
                else:
                    hidden, guesses = prefill_batch(self.target, self.cache, slots, starts, chunks), [None] * len(rows)
        except Exception as err:  # one forward for several prompts: retry them alone so only the culprit fails
            if len(rows) == 1:
                return [self._fail(rows[0][0], err)]
            return [reply for r, _, _ in rows for reply in self._prefill_step([r])]
        self.counters["num_prefill_chunks"] += 1
        elapsed = (time.perf_counter() - start) / len(rows)
        for (request_id, progress, take), states, guess in zip(rows, hidden, guesses, strict=True):
            progress.guesses = guess
            if progress.num_prompt_logprobs is not None:
                progress.prompt_logprobs.append(prompt_logprobs(self.target.logits(states), progress.token_ids,
                                                                progress.done, progress.num_prompt_logprobs))
            progress.done += take
            progress.compute_s += elapsed
            request = self.requests[request_id]
            if request.want_features or progress.done == len(progress.token_ids):
                progress.features.append(states)
            if progress.remaining == 0:
                replies.append(self._prefilled(request_id, request))
        return replies

    def _prefill_anchors(self, request: VerifierRequest, progress: PrefillProgress, take: int) -> tuple[int, ...]:
        """The prompt's last entry gets Hidden Transfer slots when this chunk ends the prompt and the first token
        is sampled here: their guesses become the first tree, under that token (so the first verification
        has one too). The slots sit right after the prompt, inside the model's context and the slot."""
        if self.hidden is None or take != progress.remaining or not progress.sample_next or request.mode == "off" \
                or request.max_tree_nodes == 0:
            return ()
        end = len(progress.token_ids) + self.hidden.num_offsets
        return (take - 1,) if end < self.target.max_positions and end <= self.cache.max_len else ()

    def _prefilled(self, request_id: str, request: VerifierRequest) -> Committed:
        """The last chunk is cached: sample the first token of a new request, reply with the features."""
        progress = request.prefill
        assert progress is not None
        request.prefill = None
        self._share_prompt(request_id, request, progress)
        tokens: list[int] = []
        logprobs = None
        if progress.sample_next:
            logits = self.target.logits(progress.features[-1][-1:])[0]
            position = torch.tensor([len(progress.token_ids)])
            tokens = [int(choose_tokens(logits[None], request.params, position)[0])]
            if request.num_logprobs is not None:
                logprobs = token_logprobs(logits[None], tokens, request.num_logprobs)
            request.commit(tokens)
            if progress.guesses is not None and self.hidden is not None:  # the first tree, under the first token
                request.hidden.tree = self.hidden.tree(progress.guesses, request.max_tree_nodes)
                request.hidden.epoch = request.epoch
                self.counters["num_hidden_trees"] += 1
                self.counters["num_prefill_guesses"] += 1
        features = torch.cat(progress.features) if request.want_features and progress.features else None
        prompt = Logprobs.concat(progress.prompt_logprobs) if progress.num_prompt_logprobs is not None else None
        return self._committed(request_id, progress.epoch, tokens, 0, 0, features, progress.compute_s,
                               logprobs=logprobs, prompt_logprobs=prompt)

    def _fail(self, request_id: str, err: Exception) -> Failed:
        """A request that cannot go on: it stops here (its slot is freed on Release); the others go on."""
        request = self.requests.get(request_id)
        if request is not None:
            request.is_stopped, request.prefill = True, None
        self.counters["num_failed"] += 1
        if isinstance(err, (RequestError, ProtocolError, ValueError)):
            return Failed(request_id, "bad_request", str(err))
        log.error("verification of %s failed", request_id, exc_info=err)
        return Failed(request_id, "internal", f"verifier error: {type(err).__name__}: {err}")

    # ---- verification --------------------------------------------------------------------------------

    def _verify_step(self, request_ids: list[str], paused: bool = False) -> list[Message]:
        """One forward for every chosen request; a failure of the shared forward is retried row by row.
        `paused`: speculation is shut (workers/elastic.py), every row verifies its root alone."""
        requests = [self.requests[r] for r in request_ids]
        start = time.perf_counter()
        if paused:
            trees = [self._take(r, None, None, None, 0) for r in requests]
            self.counters["num_paused_batches"] += 1
        else:
            with tracer.span("choose", rows=len(requests)):
                trees = self._choose_batch(requests)
        anchors = self._anchors(requests, trees) if self.hidden is not None and not paused else [()] * len(requests)
        jobs = [VerifyJob(r.slot, r.epoch - 1, r.committed[-1], tree, r.params, self.target_candidates, a)
                for r, tree, a in zip(requests, trees, anchors, strict=True)]
        width = 1 + max(tree.num_nodes for tree in trees)
        context = max(r.epoch for r in requests)
        try:
            with tracer.span("verify", rows=len(jobs), width=width, nodes=sum(t.num_nodes for t in trees),
                             context=context):
                began = time.perf_counter()
                verdicts = verify_batch(self.target, self.cache, jobs, self.hidden.maps if self.hidden else None)
                forward_s = time.perf_counter() - began
        except Exception as err:
            if len(jobs) == 1:
                return [self._fail(request_ids[0], err)]
            log.warning("batched verification of %d requests failed (%s): verifying them one by one",
                        len(jobs), err)
            return [reply for r in request_ids for reply in self._verify_step([r], paused)]
        slots = self.hidden.width_of(anchors) if self.hidden is not None else 0  # what the slots cost, in rows
        if not (paused and self.lease is not None and self.lease.is_held):  # borrowed cores: another cost curve
            self.cost.observe(len(jobs), width + slots, context, forward_s)
        self.counters["num_batches"] += 1
        with tracer.span("learn", rows=len(jobs)):
            self._learn(requests, jobs, verdicts)
            share = (time.perf_counter() - start) / len(jobs)
            return [self._apply(request_id, request, job, verdict, share)
                    for request_id, request, job, verdict in zip(request_ids, requests, jobs, verdicts, strict=True)]

    def _apply(self, request_id: str, request: VerifierRequest, job: VerifyJob, verdict: Verdict,
               compute_s: float) -> Committed:
        epoch, tree = request.epoch, job.tree
        tokens = verdict_tokens(tree, verdict)
        is_hit = request.commit(tokens)
        hidden = [where for _, source, where in request.chosen_parts if source == "hidden"]
        if hidden and tree.num_nodes:  # verified nodes of the guess tree, and how many of them were accepted
            self.counters["num_hidden_verifications"] += 1
            accepted = request.verified_index[verdict.path].numpy()
            self.counters["num_hidden_accepted"] += int(np.isin(accepted, hidden[0]).sum())
        if verdict.guesses is not None and self.hidden is not None:  # the next tree, under the bonus
            request.hidden.tree = self.hidden.tree(verdict.guesses, request.max_tree_nodes)
            request.hidden.epoch = request.epoch
            self.counters["num_hidden_trees"] += 1
        features = committed_features(verdict.hidden, verdict.path) if request.want_features else None
        logprobs = None
        if request.num_logprobs is not None:  # the verification's own logits: no extra forward
            logprobs = token_logprobs(verdict.logits[committed_rows(verdict.path)], tokens, request.num_logprobs)
        self.counters["num_verifications"] += 1
        self.counters["num_nodes_verified"] += tree.num_nodes
        return self._committed(request_id, epoch, tokens, tree.max_depth, tree.num_nodes, features, compute_s, is_hit,
                               logprobs, off_top=verdict.off_top)

    def _learn(self, requests: list[VerifierRequest], jobs: list[VerifyJob], verdicts: list[Verdict]) -> None:
        """Feed the acceptance estimates every verdict this verification settled, verified or not, for the
        whole batch at once (one update per estimator).

        A held node at depth <= len(tokens) would have been accepted exactly when it lies on the path the
        tokens spell (the target's choice at each position does not depend on the tree), so even a
        verification of no node teaches the estimates about depth 1. Verified nodes deeper than that
        were rejected (an ancestor was). Deeper unverified nodes are unknown and left out.
        """
        parts = [(request, held, source, where, verdict_tokens(job.tree, verdict),
                  request.verified_index.numpy() if job.tree.num_nodes else np.zeros(0, dtype=np.int64))
                 for request, job, verdict in zip(requests, jobs, verdicts, strict=True)
                 for held, source, where in request.chosen_parts if held.num_nodes]
        if not parts:
            return
        forest = Forest([held for _, held, _, _, _, _ in parts])
        on_path = forest.on_paths([tokens for *_, tokens, _ in parts])
        lengths = np.array([len(tokens) for *_, tokens, _ in parts], dtype=np.int64)
        verified = np.concatenate([np.isin(where, chosen) for _, _, _, where, _, chosen in parts])
        known = (forest.depths.numpy() <= lengths[forest.segment]) | verified
        groups: dict[tuple[bool, str], list[int]] = {}
        for i, (request, _, source, *_) in enumerate(parts):
            groups.setdefault((request.params.is_greedy, source), []).append(i)
        path_probs = torch.cat([held.path_probs() for _, held, *_ in parts])
        for key, members in groups.items():
            estimator = self.acceptance[key]
            local = [(i, np.flatnonzero(known[forest.offsets[i]: forest.offsets[i] + forest.sizes[i]]))
                     for i in members]
            local = [(i, index) for i, index in local if index.size]
            if not local:
                continue
            if isinstance(estimator, CalibratedAcceptance):  # every verdict of the group in one update
                index = torch.from_numpy(np.concatenate([forest.offsets[i] + index for i, index in local]))
                estimator.update_nodes(forest.depths[index], path_probs[index],
                                       torch.from_numpy(on_path)[index], [index.size for _, index in local])
            else:  # its features need each tree: the per-tree update
                estimator.update_many([(parts[i][1], torch.from_numpy(index),
                                        torch.from_numpy(on_path[forest.offsets[i] + index])) for i, index in local])

    def _choose_batch(self, requests: list[VerifierRequest]) -> list[DraftTree]:
        """Each request's nodes to verify, chosen for the whole batch (docs/design.md §4, batching).

        Every draft source of a request (the drafter's tree it holds, the verifier's own prompt lookup,
        Hidden Transfer's guesses) offers a tree; with `merge_sources` they are merged into one, whose
        nodes carry the best of their sources' acceptance estimates, so one verification checks the best
        guesses of all of them (otherwise the sources compete and the best one is verified). A padded
        forward costs t(B, W) whatever each row fills, so the batch picks the one width W that maximises
        the batch's expected committed tokens per second, and each request verifies its W - 1 best nodes.
        At one request this is the single-request choice (a useless drafter then costs nothing; a
        repeating text speeds up even when the drafter's tree is worth a little). Every tree of every
        request is estimated and ranked in one numpy program (workers/batch_choice.py).
        """
        by_row = [self._offers(row, request) for row, request in enumerate(requests)]
        components = [offer for offers in by_row for offer in offers]
        if not components:
            return [self._take(r, None, None, None, 0) for r in requests]
        forest = Forest([o.tree for o in components])
        path_probs = forest.path_probs()
        for offer, probs in zip(components, forest.split(path_probs), strict=True):
            offer.tree.cache_path_probs(probs)  # learning reads them after the verdict
        estimates = self._estimates(requests, components, forest, path_probs)
        if self.hidden is not None:  # Hidden Transfer prices its slots by what its guesses add to the others'
            self._observe_hidden(requests, components, rank_offers(forest, estimates, [o.limit for o in components],
                                                                   self.max_tree_nodes + 1))
        offers, offer_estimates = components, forest.split(estimates)
        if self.merge_sources and any(len(o) > 1 for o in by_row):
            offers, offer_estimates = merge_offers(by_row, offer_estimates, [r.max_tree_nodes for r in requests])
            forest = Forest([o.tree for o in offers])
        ranking = rank_offers(forest, torch.cat(offer_estimates), [o.limit for o in offers], self.max_tree_nodes + 1)
        rows = [o.row for o in offers]
        max_width = 1 + int(ranking.limits.max())
        expected = best_by_row(rows, ranking.expected[:, :max_width], len(requests))
        if self.cost.is_known:
            width = choose_width(expected, self.cost.table(len(requests), max(r.epoch for r in requests)))
        else:  # nothing measured yet: verify what the budget allows
            width = max_width
        if width == 1 and any(r.tree.num_nodes and (r.num_empty_choices + 1) % EXPLORE_EVERY == 0 for r in requests):
            width = min(2, max_width)  # keep the estimates honest: a drafter that got better must be able to show it
        picks = pick_offers(rows, ranking.expected, width, len(requests))
        return [self._take(request, None, None, None, 0) if pick is None
                else self._take(request, offers[pick], ranking.best(pick), offer_estimates[pick], width - 1)
                for request, pick in zip(requests, picks, strict=True)]

    def _offers(self, row: int, request: VerifierRequest) -> list[Offer]:
        """The request's trees, one per draft source, cut to what fits in the model's context."""
        problem = request.take_pending()
        if problem is not None:
            self.counters["num_drafts_malformed"] += 1
            log.warning("dropped a malformed draft: %s", problem)
        if request.mode == "off" or request.max_tree_nodes == 0:
            return []
        trees = []
        if request.tree.num_nodes:
            trees.append((request.tree, "drafter"))
        if self.local_lookup:  # a fresh lookup, also when the held tree is an older (used-up) lookup
            lookup = self._look_up(request)
            if lookup is not None:
                trees.append((lookup, "lookup"))
        guesses = request.hidden.take_tree(request.epoch) if self.hidden is not None else None
        if guesses is not None and guesses.num_nodes:
            trees.append((guesses, "hidden"))
        room = self.target.max_positions - request.epoch  # the deepest node must stay inside the model's context
        offers = []
        for tree, source in trees:
            if tree.max_depth > room:
                tree = tree.select(torch.nonzero(tree.depths <= room).flatten())
            if tree.num_nodes:
                offers.append(Offer(row, tree, source, min(request.max_tree_nodes, tree.num_nodes)))
        return offers

    def _estimates(self, requests: list[VerifierRequest], offers: list[Offer], forest: Forest,
                   path_probs: torch.Tensor) -> torch.Tensor:
        """[N] acceptance estimates of every offered node, capped along paths; each offer by its own
        (greedy?, source) estimator, every offer of one estimator at once."""
        keys = [(requests[offer.row].params.is_greedy, offer.source) for offer in offers]
        distinct = list(dict.fromkeys(keys))
        if len(distinct) == 1:
            raw = self.acceptance[distinct[0]].raw_estimates([o.tree for o in offers], forest.depths, path_probs)
            return forest.cap_by_ancestors(raw)
        node_group = np.array([distinct.index(key) for key in keys])[forest.segment]
        raw = torch.zeros(forest.num_nodes, dtype=torch.float64)
        for group, key in enumerate(distinct):
            nodes = torch.from_numpy(np.flatnonzero(node_group == group))
            trees = [offer.tree for offer, k in zip(offers, keys, strict=True) if k == key]
            raw[nodes] = self.acceptance[key].raw_estimates(trees, forest.depths[nodes], path_probs[nodes])
        return forest.cap_by_ancestors(raw)

    def _observe_hidden(self, requests: list[VerifierRequest], offers: list[Offer], ranking: Ranking) -> None:
        """Hidden Transfer prices its slots by how much more its guess tree offers than the other sources."""
        for index, offer in enumerate(offers):
            if offer.source != "hidden":
                continue
            width = min(1 + int(ranking.limits[index]), self.max_tree_nodes + 1)
            others = [float(ranking.expected[i, width - 1]) for i, o in enumerate(offers)
                      if o.row == offer.row and i != index]
            requests[offer.row].hidden.observe(float(ranking.expected[index, width - 1]), max(others, default=1.0))

    def _anchors(self, requests: list[VerifierRequest], trees: list[DraftTree]) -> list[tuple[int, ...]]:
        """Which entries of each row get Hidden Transfer slots in this forward (workers/hidden_source.py)."""
        assert self.hidden is not None
        estimates = [r.verified_estimates for r in requests]  # in the verified trees' order
        costs = self.cost.table(len(requests), max(r.epoch for r in requests)) if self.cost.is_known else None
        room = [self.target.max_positions - r.epoch - self.hidden.num_offsets - 1 for r in requests]
        can = [r.mode != "off" and r.max_tree_nodes > 0 and t.max_depth <= m
               for r, t, m in zip(requests, trees, room, strict=True)]
        return self.hidden.choose([r.hidden for r in requests], trees, estimates, costs, can)

    def _take(self, request: VerifierRequest, offer: Offer | None, order: torch.Tensor | None,
              estimates: torch.Tensor | None, num: int) -> DraftTree:
        """The request verifies the `num` first nodes of `order` (best first) of `offer`'s tree, whose
        sources it now holds for learning (None: no node)."""
        if offer is None or order is None or estimates is None:
            request.verified_index = torch.zeros(0, dtype=torch.long)
            request.chosen_parts = ()
            request.verified_estimates = torch.zeros(0, dtype=torch.float64)
            return DraftTree.empty()
        num = min(num, order.numel())
        request.chosen_parts, request.chosen_source = offer.sources(), offer.source
        request.verified_index = order[:num]
        request.verified_estimates = estimates[order[:num]]
        if num == 0:
            request.num_empty_choices += 1
        return offer.tree.reorder(order[:num])

    def _look_up(self, request: VerifierRequest) -> DraftTree | None:
        """Draft from the request's own tokens (prompt lookup): it needs no model and no round trip, so a
        drafter's miss does not cost a verifier-only step when the text repeats."""
        if request.lookup is None:  # committed tokens only grow, so the index stays valid for the request's life
            request.lookup = LookupIndex(LOOKUP_MAX_NGRAM, LOOKUP_MIN_NGRAM)
        rows = request.lookup.continuations(request.committed, LOOKUP_DEPTH, LOOKUP_MATCHES)
        if not rows.numel():
            return None
        self.counters["num_lookups"] += 1
        return trie_from_rows(rows)

    def _committed(self, request_id: str, epoch: int, tokens: list[int], depth: int, num_nodes: int,
                   features: torch.Tensor | None, compute_s: float, is_hit: bool = False,
                   logprobs: Logprobs | None = None, prompt_logprobs: Logprobs | None = None,
                   off_top: bool = False) -> Committed:
        self.compute_s += compute_s
        blob = to_blob(features.float()) if features is not None else None
        return Committed(request_id, epoch, tokens, depth, blob, compute_s, num_nodes, is_hit, logprobs,
                         prompt_logprobs, off_top)


def verdict_tokens(tree: DraftTree, verdict: Verdict) -> list[int]:
    """What a verification commits: its accepted path's tokens, then the bonus token."""
    return [*tree.token_ids[verdict.path].tolist(), verdict.bonus]


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

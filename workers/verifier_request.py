"""One request as the verifier drives it: its cache slot, committed tokens, and the newest draft tree.

The verifier is ahead of the coordinator: it commits, re-roots the tree it holds along what it just
committed, and verifies again without waiting for anyone. Trees from the drafter arrive tagged with
the epoch they were built on and are re-rooted along the tokens committed since.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from protocol.drafts import MAX_TREE_NODES
from protocol.logprobs import Logprobs
from protocol.messages import Draft
from protocol.params import SamplingParams
from workers.hidden_source import HiddenState
from workers.lookup_index import LookupIndex
from workers.tree import DraftTree
from workers.wire import tree_from_blobs

MAX_HELD_NODES = MAX_TREE_NODES  # a drafter's living tree beyond this is refused (its ancestor matrix is N x N)

MODES = ("async", "sync", "off")


@dataclass
class PrefillProgress:
    """A prompt being cached in chunks (interleaved with the running requests' verifications)."""

    token_ids: list[int]  # what the slot must hold when done
    epoch: int  # of the Prefill message
    sample_next: bool
    done: int = 0  # tokens cached so far
    features: list[torch.Tensor] = field(default_factory=list)  # per chunk, when the drafter reads them
    compute_s: float = 0.0
    num_prompt_logprobs: int | None = None  # the prompt's log-probabilities are wanted (N alternatives)
    prompt_logprobs: list[Logprobs] = field(default_factory=list)  # per chunk
    donor: str = ""  # a sibling with the same prompt, still prefilling: wait, then copy its cache
    guesses: torch.Tensor | None = None  # [k, V] Hidden Transfer's guesses after the first token (last chunk)

    @property
    def remaining(self) -> int:
        return len(self.token_ids) - self.done


@dataclass
class VerifierRequest:
    """Phases: prefilling (chunks pending) -> running -> stopped (a stop token or `max_length`; waits for
    Release). In sync mode a running request is runnable only once a draft for its current epoch has
    arrived (`is_fresh`). Its slot of the verifier's cache holds x[0 .. C-1) while running."""

    slot: int
    params: SamplingParams
    committed: list[int]
    max_tree_nodes: int
    mode: str
    want_features: bool
    max_length: int
    stop_token_ids: frozenset[int]
    tree: DraftTree = field(default_factory=DraftTree.empty)  # the drafter's newest tree, rooted at committed[-1]
    # what the last verification drew its nodes from: each source's tree (the drafter's, the verifier's own
    # lookup, Hidden Transfer's guesses) and where its nodes were in the verified union, whose verdicts teach
    # the acceptance estimates; the drafter's tree stays held either way
    chosen_parts: tuple[tuple[DraftTree, str, np.ndarray], ...] = ()
    chosen_source: str = "drafter"  # "drafter", "lookup", "hidden" or a union such as "drafter+lookup"
    verified_estimates: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    pending: Draft | None = None  # the newest draft not looked at yet (decoded only when a verification starts)
    is_fresh: bool = False
    is_stopped: bool = False
    num_empty_choices: int = 0  # verifications where the cost model chose no node (for exploration)
    num_drafts_dropped: int = 0  # drafts that no longer fit the committed tokens
    prefill: PrefillProgress | None = None  # chunks still to cache; not runnable until done
    verified_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))  # last choice
    lookup: LookupIndex | None = None  # n-grams of `committed` for the verifier's prompt lookup (built lazily)
    num_logprobs: int | None = None  # send each committed token's log-probability and N alternatives
    hidden: HiddenState = field(default_factory=HiddenState)  # Hidden Transfer's guess tree and anchor pricing

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def epoch(self) -> int:
        return len(self.committed)

    @property
    def is_running(self) -> bool:
        """Prefilled and not stopped: verifiable once it has what its mode waits for."""
        return self.prefill is None and not self.is_stopped

    @property
    def is_runnable(self) -> bool:
        return self.is_running and (self.mode != "sync" or self.is_fresh)

    def can_verify(self, paused: bool) -> bool:
        """Runnable now; with speculation paused (workers/elastic.py) a running request waits for no draft."""
        return self.is_running if paused else self.is_runnable

    def receive(self, draft: Draft) -> None:
        """Keep the newest draft; drafts in between are never decoded. Sync mode wants one of this epoch."""
        if self.pending is not None:
            self.num_drafts_dropped += 1
        self.pending = draft
        self.is_fresh = self.is_fresh or draft.epoch == self.epoch

    def take_pending(self) -> str | None:
        """Decode the newest draft and hold it if it still fits; returns why a malformed one was dropped.

        A bad draft costs the request nothing: it goes on with the tree it holds.
        """
        draft, self.pending = self.pending, None
        if draft is None or self.mode == "off":
            return None
        try:
            tree = tree_from_blobs(draft.token_ids, draft.parents, draft.probs)
        except ValueError as err:
            self.num_drafts_dropped += 1
            return str(err)
        if tree.num_nodes > MAX_HELD_NODES:
            self.num_drafts_dropped += 1
            return f"draft tree has {tree.num_nodes} nodes, more than {MAX_HELD_NODES}"
        self.offer(draft.epoch, draft.root, tree)
        return None

    def offer(self, epoch: int, root: int, tree: DraftTree) -> bool:
        """Take a drafter's tree built on `epoch` if it still fits the committed tokens; False if dropped."""
        if not 1 <= epoch <= self.epoch or self.committed[epoch - 1] != root:
            self.num_drafts_dropped += 1
            return False
        rerooted = tree.reroot(self.committed[epoch:])
        if rerooted is None:
            self.num_drafts_dropped += 1
            return False
        self.tree = rerooted
        self.is_fresh = self.is_fresh or epoch == self.epoch
        return True

    def commit(self, token_ids: list[int]) -> bool:
        """Append a verification's tokens; the held tree follows them (or is dropped); stop rules apply.

        Returns True on a re-root hit: the held tree spelled every committed token, bonus included.
        """
        rerooted = self.tree.reroot(token_ids) if self.tree.num_nodes else None
        self.tree = rerooted or DraftTree.empty()
        self.committed.extend(token_ids)
        self.is_fresh = False
        if self.max_length and self.epoch >= self.max_length:
            self.is_stopped = True
        if any(t in self.stop_token_ids for t in token_ids):
            self.is_stopped = True
        return rerooted is not None

    def steer(self, mode: str, want_features: bool) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode, self.want_features = mode, want_features
        if mode == "off":
            self.tree, self.pending = DraftTree.empty(), None

"""A request as the coordinator sees it: the authoritative committed tokens and their bookkeeping.

Phases and the only legal transitions (each made by one method here):

    QUEUED --assign_verifier--> PREFILLING --prefilled--> RUNNING --finish--> DONE
      ^                             |                        |
      +-------- lose_verifier ------+------------------------+        (any phase --finish--> DONE)

QUEUED: waiting for a verifier (new, or its verifier was lost: the committed tokens are kept and the
next verifier re-prefills them). PREFILLING: a Prefill is out. RUNNING: the verifier drives the
request and streams `Committed` results, which `apply` appends in epoch order.
The drafter link is separate: `drafter` (who drafts, or None), `is_drafter_open` (it has the request),
`is_features_pending` (a Falcon drafter waits for the verifier's features before it can open).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from protocol.params import SamplingParams
from runtime.stats import SpecStats
from runtime.stopping import StopRules, apply_stop
from runtime.text import TextStream


class Phase(enum.Enum):
    QUEUED = "queued"
    PREFILLING = "prefilling"
    RUNNING = "running"
    DONE = "done"


class IllegalTransition(RuntimeError):
    pass


@dataclass
class Request:
    request_id: str
    client: bytes
    prompt_ids: list[int]
    params: SamplingParams
    rules: StopRules
    text: TextStream
    started: float  # on the coordinator's clock
    deadline: float
    committed: list[int] = field(default_factory=list)
    phase: Phase = Phase.QUEUED
    verifier: bytes | None = None
    drafter: bytes | None = None
    is_drafter_open: bool = False
    is_features_pending: bool = False
    drafter_failed: bool = False  # a drafter could not serve it: verifier-only from then on
    stats: SpecStats = field(default_factory=SpecStats)
    finish_reason: str | None = None
    index: int = 0  # sample index (n > 1): sample i > 0 has the id `<client's request id>#<i>`
    num_logprobs: int | None = None  # each committed token's log-probability and N alternatives, when asked
    num_prompt_logprobs: int | None = None  # the prompt's, with the first commit (sample 0 only)

    def __post_init__(self) -> None:
        self.committed = list(self.prompt_ids)

    @property
    def client_request_id(self) -> str:
        """The id the client knows: every sample of a request streams under it."""
        return self.request_id.rpartition("#")[0] if self.index else self.request_id

    @property
    def epoch(self) -> int:
        """The committed length C: every draft and result names the C it was built on."""
        return len(self.committed)

    @property
    def generated(self) -> list[int]:
        return self.committed[len(self.prompt_ids):]

    @property
    def max_length(self) -> int:
        return len(self.prompt_ids) + self.rules.max_new_tokens

    # ---- phase transitions -------------------------------------------------------------------------

    def _move(self, allowed: tuple[Phase, ...], to: Phase) -> None:
        if self.phase not in allowed:
            raise IllegalTransition(f"request {self.request_id}: {self.phase.value} -> {to.value}")
        self.phase = to

    def assign_verifier(self, identity: bytes) -> None:
        self._move((Phase.QUEUED,), Phase.PREFILLING)
        self.verifier = identity

    def prefilled(self) -> None:
        self._move((Phase.PREFILLING,), Phase.RUNNING)

    def lose_verifier(self) -> None:
        self._move((Phase.PREFILLING, Phase.RUNNING), Phase.QUEUED)
        self.verifier = None
        self.is_features_pending = False  # the new verifier's prefill decides afresh

    def finish(self, reason: str) -> None:
        self.phase, self.finish_reason = Phase.DONE, reason

    # ---- drafter link ------------------------------------------------------------------------------

    def link_drafter(self, identity: bytes, awaits_features: bool = False) -> None:
        """A drafter is assigned; it opens with the first commit, or once the verifier's features arrive."""
        self.drafter, self.is_drafter_open, self.is_features_pending = identity, False, awaits_features

    def drafter_opened(self) -> None:
        self.is_drafter_open, self.is_features_pending = True, False

    def unlink_drafter(self, failed: bool = False) -> None:
        self.drafter, self.is_drafter_open, self.is_features_pending = None, False, False
        self.drafter_failed = self.drafter_failed or failed

    # ---- results -----------------------------------------------------------------------------------

    def apply(self, token_ids: list[int]) -> tuple[list[int], str]:
        """Append a commit under the stop rules; returns (tokens kept, text delta). Sets `finish_reason`."""
        kept, reason = apply_stop(token_ids, len(self.generated), self.rules)
        self.committed += kept
        delta, hit_stop_string = self.text.push(self.generated)
        if hit_stop_string:
            reason = "stop"
        if reason is not None:
            self.finish_reason = reason
            if not hit_stop_string:
                delta += self.text.flush(self.generated)
        return kept, delta

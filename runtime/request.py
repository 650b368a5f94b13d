"""A request as the coordinator sees it: the authoritative committed tokens and their bookkeeping."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from protocol.messages import Draft
from runtime.stats import SpecStats
from runtime.stopping import StopRules, apply_stop
from runtime.text import TextStream
from workers.sampling import SamplingParams


class Phase(enum.Enum):
    QUEUED = "queued"
    RESYNC = "resync"  # a verifier must rebuild the cache from the committed tokens (verifier lost,
    # or a drafter that reads features joined mid-request and needs them)
    PREFILLING = "prefilling"  # Prefill sent to the verifier
    DRAFTING = "drafting"  # waiting for a Draft of the current epoch
    READY = "ready"  # has what it needs for the next verification
    VERIFYING = "verifying"  # Draft (or empty tree) sent to the verifier
    DONE = "done"


@dataclass
class Request:
    request_id: str
    client: bytes
    prompt_ids: list[int]
    params: SamplingParams
    rules: StopRules
    text: TextStream
    deadline: float
    committed: list[int] = field(default_factory=list)
    phase: Phase = Phase.QUEUED
    verifier: bytes | None = None
    drafter: bytes | None = None
    draft: Draft | None = None
    stats: SpecStats = field(default_factory=SpecStats)
    started: float = field(default_factory=time.monotonic)
    finish_reason: str | None = None
    wants_features_resync: bool = False  # the resync also sends features to open a new drafter
    drafter_failed: bool = False  # a drafter could not serve it: verifier-only from then on

    def __post_init__(self) -> None:
        self.committed = list(self.prompt_ids)

    @property
    def epoch(self) -> int:
        """The committed length C: every draft and result names the C it was built on."""
        return len(self.committed)

    @property
    def generated(self) -> list[int]:
        return self.committed[len(self.prompt_ids):]

    def apply(self, token_ids: list[int]) -> tuple[list[int], str]:
        """Append a commit under the stop rules; returns (tokens kept, text delta)."""
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

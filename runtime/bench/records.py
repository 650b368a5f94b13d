"""What one method's run leaves behind: per-request records, placement, runtime metrics, memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BenchSettings:
    """What every method is asked to do: the same prompts (as token ids) and sampling settings."""

    prompts: list[list[int]]
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None
    repeats: int = 1
    warmup_tokens: int = 8

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class RequestRecord:
    token_ids: list[int]  # generated tokens only
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)  # a Tandem request's stats; empty for peers


@dataclass
class MethodRun:
    name: str
    kind: str  # "peer" or "tandem"
    placement: dict[str, Any]  # device, cores and threads (per process for Tandem)
    passes: list[list[RequestRecord]] = field(default_factory=list)  # timed passes over the prompts
    metrics: dict[str, Any] = field(default_factory=dict)  # client.metrics() at the end (Tandem)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_util: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why the method did not finish

    @property
    def requests(self) -> list[RequestRecord]:
        return [record for records in self.passes for record in records]

    @property
    def outputs(self) -> list[list[int]]:
        """The first timed pass's outputs, in prompt order."""
        return [record.token_ids for record in self.passes[0]] if self.passes else []

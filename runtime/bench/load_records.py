"""What the load mode asks of every method, and what one (method, concurrency level) run leaves behind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtime.bench.load_metrics import num_requests_at, prompt_indices
from runtime.bench.records import BenchSettings


@dataclass(frozen=True)
class LoadSettings:
    """The same prompts (token ids), levels and sampling for every method; at each level c, requests are kept
    c in flight until `requests_at(c)` have been served (the prompt list cycled)."""

    prompts: list[list[int]]
    levels: list[int]
    max_new_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None
    num_requests: int | None = None  # per level; None = max(c, number of prompts)
    warmup_tokens: int = 8

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("load mode needs at least one prompt")
        if not self.levels or min(self.levels) < 1:
            raise ValueError(f"concurrency levels must be integers >= 1, got {self.levels!r}")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"--num-requests must be >= 1, got {self.num_requests!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens!r}")

    @classmethod
    def of(cls, settings: BenchSettings, levels: list[int], num_requests: int | None) -> LoadSettings:
        return cls(prompts=settings.prompts, levels=levels, max_new_tokens=settings.max_new_tokens,
                   temperature=settings.temperature, seed=settings.seed, num_requests=num_requests,
                   warmup_tokens=settings.warmup_tokens)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0

    def requests_at(self, concurrency: int) -> list[int]:
        """The prompt index of each request served at this level, in the order they are started."""
        return prompt_indices(num_requests_at(concurrency, len(self.prompts), self.num_requests), len(self.prompts))


@dataclass
class LoadRecord:
    """One request: its tokens and when each chunk of them arrived (seconds since the request started)."""

    prompt_index: int
    token_ids: list[int] = field(default_factory=list)  # generated tokens only
    chunk_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)  # tokens per chunk
    stats: dict[str, Any] = field(default_factory=dict)  # a Tandem request's stats (tau, ...); empty for peers


@dataclass
class LevelRun:
    """One method at one concurrency level."""

    method: str
    kind: str  # "peer" or "tandem"
    concurrency: int
    placement: dict[str, Any]
    records: list[LoadRecord] = field(default_factory=list)  # in the order the requests were started
    wall_s: float = 0.0  # first request sent to last token received
    verifier_busy_s: float | None = None  # the verifier's compute seconds within the level (Tandem)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why the level did not finish

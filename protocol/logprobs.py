"""Log-probabilities of a run of tokens, as they travel from the verifier to the clients.

Which distribution: the target's *raw* next-token distribution at each position (log_softmax of its
logits: temperature 1, no top-k, no top-p), whatever sampling settings chose the token, and whatever
drafter proposed it. That is vLLM's default (`logprobs_mode: raw_logprobs`); speculation never changes
what is reported. Pure data (no torch), so the coordinator forwards it without a model library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import ProtocolError

MAX_TOP_LOGPROBS = 20  # most alternatives a request may ask for per token (vLLM's default max_logprobs)


@dataclass(frozen=True)
class Logprobs:
    """Per token: its id, its log-probability, and the N most likely tokens at its position (best first)."""

    token_ids: list[int]
    logprobs: list[float]
    top_ids: list[list[int]]  # [len, N]; N = 0 when only the tokens' own log-probabilities were asked for
    top_logprobs: list[list[float]]  # [len, N]

    def __post_init__(self) -> None:
        lengths = {len(self.token_ids), len(self.logprobs), len(self.top_ids), len(self.top_logprobs)}
        if len(lengths) != 1:
            raise ProtocolError(f"logprobs: token_ids, logprobs, top_ids and top_logprobs differ in length "
                                f"({len(self.token_ids)}, {len(self.logprobs)}, {len(self.top_ids)}, "
                                f"{len(self.top_logprobs)})")
        if any(len(ids) != len(values) for ids, values in zip(self.top_ids, self.top_logprobs, strict=True)):
            raise ProtocolError("logprobs: a row of top_ids and its row of top_logprobs differ in length")

    def __len__(self) -> int:
        return len(self.token_ids)

    def head(self, num: int) -> Logprobs:
        """The first `num` tokens' entries (a commit cut by a stop rule)."""
        if num >= len(self):
            return self
        return Logprobs(self.token_ids[:num], self.logprobs[:num], self.top_ids[:num], self.top_logprobs[:num])

    def top(self, index: int) -> list[tuple[int, float]]:
        """(token id, log-probability) of the alternatives at token `index`, best first."""
        return list(zip(self.top_ids[index], self.top_logprobs[index], strict=True))

    @classmethod
    def empty(cls) -> Logprobs:
        return cls([], [], [], [])

    @classmethod
    def concat(cls, parts: Sequence[Logprobs]) -> Logprobs:
        return cls([t for p in parts for t in p.token_ids], [v for p in parts for v in p.logprobs],
                   [r for p in parts for r in p.top_ids], [r for p in parts for r in p.top_logprobs])

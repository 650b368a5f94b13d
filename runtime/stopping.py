"""Stop rules applied to every commit: EOS / stop token ids and `max_new_tokens` (pure functions)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import RequestError


@dataclass(frozen=True)
class StopRules:
    max_new_tokens: int = 128  # 0: no new token (a request that only scores its prompt)
    stop_token_ids: frozenset[int] = frozenset()  # EOS ids and user stop ids alike; the token is kept

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or isinstance(self.max_new_tokens, bool) \
                or self.max_new_tokens < 0:
            raise RequestError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}",
                               "max_new_tokens")


def apply_stop(new_token_ids: Sequence[int], num_generated: int, rules: StopRules) -> tuple[list[int], str | None]:
    """Cut a commit at the first stop token or at the token budget.

    Returns (tokens to append, finish reason: "stop", "length" or None to go on).
    """
    budget = rules.max_new_tokens - num_generated
    tokens = list(new_token_ids[:budget])
    for i, token in enumerate(tokens):  # a commit is at most depth + 1 tokens
        if token in rules.stop_token_ids:
            return tokens[: i + 1], "stop"
    if len(tokens) >= budget:
        return tokens, "length"
    return tokens, None

"""What clients get back: a finished generation, and errors turned into exceptions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from protocol.errors import (
    ModelMismatchError,
    OverloadedError,
    RequestError,
    RequestTimeoutError,
    TandemError,
)
from protocol.logprobs import Logprobs
from protocol.messages import Chunk, Error


@dataclass
class GenerationOutput:
    """One finished sample; with n > 1 the first sample, and every sample (itself first) in `samples`."""

    text: str
    token_ids: list[int]
    finish_reason: str  # stop | length | cancelled
    stats: dict[str, Any] = field(default_factory=dict)  # tau, num_verifications, accepted_per_depth, ...
    logprobs: Logprobs | None = None  # of `token_ids`, when asked (GenerationParams.logprobs)
    prompt_logprobs: Logprobs | None = None  # of the prompt's tokens but the first, when asked
    samples: list[GenerationOutput] = field(default_factory=list)  # all n samples by index (n > 1)


def collect(chunks: Iterable[Chunk]) -> GenerationOutput:
    """The whole answer from a request's chunks (those of every sample, in any interleaving)."""
    parts: dict[int, list[Chunk]] = {}
    prompt: Logprobs | None = None
    for chunk in chunks:
        parts.setdefault(chunk.index, []).append(chunk)
        prompt = prompt or chunk.prompt_logprobs
    if not parts or any(p[-1].finish_reason is None for p in parts.values()):
        raise TandemError("the stream ended without a finish reason")
    samples = [_sample(parts[i], prompt) for i in sorted(parts)]
    return replace(samples[0], samples=samples) if len(samples) > 1 else samples[0]


def _sample(chunks: list[Chunk], prompt: Logprobs | None) -> GenerationOutput:
    logprobs = [c.logprobs for c in chunks if c.logprobs is not None]
    last = chunks[-1]
    return GenerationOutput("".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids],
                            last.finish_reason or "", last.stats or {},
                            Logprobs.concat(logprobs) if logprobs else None, prompt)


def error_to_exception(error: Error) -> TandemError:
    message = f"{error.message} (request {error.request_id})" if error.request_id else error.message
    if error.code == "bad_request":
        return RequestError(message, error.param)
    if error.code == "model_mismatch":
        return ModelMismatchError(message)
    if error.code == "overloaded":
        return OverloadedError(message)
    if error.code == "timeout":
        return RequestTimeoutError(message)
    return TandemError(f"{error.code}: {message}")


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """A request's sampling and stop settings, as one object (the coordinator validates the values)."""

    max_new_tokens: int | None = None  # None: limits.default_max_new_tokens
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1  # samples of the prompt, each with its own seed stream (sample 0 keeps `seed`)
    logprobs: int | None = None  # each generated token's log-probability and this many alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (with max_new_tokens=0: scoring only)

    def __post_init__(self) -> None:
        stop: Any = self.stop
        object.__setattr__(self, "stop", (stop,) if isinstance(stop, str) else tuple(stop or ()))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids or ()))

    @classmethod
    def of(cls, params: GenerationParams | None, overrides: Mapping[str, Any]) -> GenerationParams:
        """`params` (default: all defaults) with keyword overrides; an unknown name raises TypeError."""
        return replace(params or cls(), **overrides) if overrides else (params or cls())

    def message_fields(self, prompt_or_ids: str | list[int]) -> dict[str, Any]:
        """Keyword arguments of a `Generate` message for this prompt (text or token ids)."""
        is_text = isinstance(prompt_or_ids, str)
        return {"prompt": prompt_or_ids if is_text else None,
                "prompt_ids": None if is_text else [int(t) for t in prompt_or_ids],
                "max_new_tokens": self.max_new_tokens, "temperature": float(self.temperature),
                "top_p": float(self.top_p), "top_k": int(self.top_k), "seed": self.seed, "stop": list(self.stop),
                "stop_token_ids": [int(t) for t in self.stop_token_ids], "ignore_eos": bool(self.ignore_eos),
                "n": self.n, "logprobs": self.logprobs, "prompt_logprobs": self.prompt_logprobs}

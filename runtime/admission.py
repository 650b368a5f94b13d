"""Turning a client's `Generate` into validated `Request`s, one per sample (or a RequestError naming the field)."""

from __future__ import annotations

import dataclasses
from typing import Any

from protocol.errors import RequestError
from protocol.logprobs import MAX_TOP_LOGPROBS
from protocol.messages import Generate
from protocol.params import MAX_SAMPLES, SamplingParams
from runtime.config import LimitsConfig
from runtime.request import Request
from runtime.stats import SpecStats
from runtime.stopping import StopRules
from runtime.text import TextStream


def build_requests(message: Generate, client: bytes, tokenizer: Any, vocab_size: int, limits: LimitsConfig,
                   eos_token_ids: frozenset[int], now: float) -> list[Request]:
    """The request's `n` samples: sample 0 keeps the request id (and the seed), sample i is `<id>#<i>` with
    its own seed stream (`SamplingParams.for_sample`); only sample 0 asks for the prompt's logprobs."""
    first = build_request(message, client, tokenizer, vocab_size, limits, eos_token_ids, now)
    return [first] + [dataclasses.replace(first, request_id=f"{first.request_id}#{i}", index=i,
                                          params=first.params.for_sample(i), num_prompt_logprobs=None,
                                          text=TextStream(tokenizer, message.stop), stats=SpecStats())
                      for i in range(1, message.n)]


def build_request(message: Generate, client: bytes, tokenizer: Any, vocab_size: int, limits: LimitsConfig,
                  eos_token_ids: frozenset[int], now: float) -> Request:
    if not message.request_id:
        raise RequestError("request_id must be a non-empty string", "request_id")
    prompt_ids = _prompt_ids(message, tokenizer)
    if not prompt_ids:
        raise RequestError("prompt is empty: give at least one token", "prompt")
    if len(prompt_ids) > limits.max_prompt_tokens:
        raise RequestError(f"prompt has {len(prompt_ids)} tokens, more than limits.max_prompt_tokens="
                           f"{limits.max_prompt_tokens}", "prompt")
    _check_ids("prompt_ids", prompt_ids, vocab_size)
    _check_ids("stop_token_ids", message.stop_token_ids, vocab_size)
    if any(not isinstance(s, str) for s in message.stop):
        raise RequestError("stop must be a list of strings", "stop")
    _check_options(message)
    max_new = message.max_new_tokens if message.max_new_tokens is not None \
        else limits.resolved_default_max_new_tokens
    least = 0 if message.prompt_logprobs is not None else 1  # scoring a prompt needs no new token
    if not isinstance(max_new, int) or not least <= max_new <= limits.max_new_tokens:
        raise RequestError(f"max_new_tokens must be an integer in [{least}, {limits.max_new_tokens}], got {max_new!r}"
                           + ("" if least else " (0 only when asking for the prompt's logprobs)"), "max_new_tokens")
    params = SamplingParams(message.temperature, message.top_p, message.top_k, message.seed).with_seed()
    stop_ids = frozenset(message.stop_token_ids) | (frozenset() if message.ignore_eos else eos_token_ids)
    return Request(message.request_id, client, prompt_ids, params, StopRules(max_new, stop_ids),
                   TextStream(tokenizer, message.stop), started=now, deadline=now + limits.request_timeout_s,
                   num_logprobs=message.logprobs, num_prompt_logprobs=message.prompt_logprobs)


def _check_options(message: Generate) -> None:
    if not isinstance(message.n, int) or isinstance(message.n, bool) or not 1 <= message.n <= MAX_SAMPLES:
        raise RequestError(f"n must be an integer in [1, {MAX_SAMPLES}], got {message.n!r}", "n")
    for name in ("logprobs", "prompt_logprobs"):
        value = getattr(message, name)
        if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
            raise RequestError(f"{name} must be an integer in [0, {MAX_TOP_LOGPROBS}] (alternatives per token) "
                               f"or null, got {value!r}", name)


def _prompt_ids(message: Generate, tokenizer: Any) -> list[int]:
    if (message.prompt is None) == (message.prompt_ids is None):
        raise RequestError("give exactly one of prompt (text) and prompt_ids (token ids)", "prompt")
    if message.prompt_ids is not None:
        return list(message.prompt_ids)
    if tokenizer is None:
        raise RequestError("this deployment has no tokenizer: send prompt_ids instead of prompt text", "prompt")
    return list(tokenizer(message.prompt)["input_ids"])


def _check_ids(field: str, ids: list[int], vocab_size: int) -> None:
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"{field} {bad[:5]} are outside the vocabulary [0, {vocab_size})", field)

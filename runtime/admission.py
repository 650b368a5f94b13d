"""Turning a client's `Generate` into a validated `Request` (or a RequestError naming the field)."""

from __future__ import annotations

from typing import Any

from protocol.errors import RequestError
from protocol.messages import Generate
from protocol.params import SamplingParams
from runtime.config import LimitsConfig
from runtime.request import Request
from runtime.stopping import StopRules
from runtime.text import TextStream


def build_request(message: Generate, client: bytes, tokenizer: Any, vocab_size: int, limits: LimitsConfig,
                  eos_token_ids: frozenset[int], now: float) -> Request:
    if not message.request_id:
        raise RequestError("request_id must be a non-empty string")
    prompt_ids = _prompt_ids(message, tokenizer)
    if not prompt_ids:
        raise RequestError("prompt is empty: give at least one token")
    if len(prompt_ids) > limits.max_prompt_tokens:
        raise RequestError(f"prompt has {len(prompt_ids)} tokens, more than limits.max_prompt_tokens="
                           f"{limits.max_prompt_tokens}")
    _check_ids("prompt_ids", prompt_ids, vocab_size)
    _check_ids("stop_token_ids", message.stop_token_ids, vocab_size)
    if any(not isinstance(s, str) for s in message.stop):
        raise RequestError("stop must be a list of strings")
    max_new = message.max_new_tokens if message.max_new_tokens is not None \
        else limits.resolved_default_max_new_tokens
    if not isinstance(max_new, int) or not 1 <= max_new <= limits.max_new_tokens:
        raise RequestError(f"max_new_tokens must be an integer in [1, {limits.max_new_tokens}], got {max_new!r}")
    params = SamplingParams(message.temperature, message.top_p, message.top_k, message.seed).with_seed()
    stop_ids = frozenset(message.stop_token_ids) | (frozenset() if message.ignore_eos else eos_token_ids)
    return Request(message.request_id, client, prompt_ids, params, StopRules(max_new, stop_ids),
                   TextStream(tokenizer, message.stop), started=now, deadline=now + limits.request_timeout_s)


def _prompt_ids(message: Generate, tokenizer: Any) -> list[int]:
    if (message.prompt is None) == (message.prompt_ids is None):
        raise RequestError("give exactly one of prompt (text) and prompt_ids (token ids)")
    if message.prompt_ids is not None:
        return list(message.prompt_ids)
    if tokenizer is None:
        raise RequestError("this deployment has no tokenizer: send prompt_ids instead of prompt text")
    return list(tokenizer(message.prompt)["input_ids"])


def _check_ids(field: str, ids: list[int], vocab_size: int) -> None:
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise RequestError(f"{field} {bad[:5]} are outside the vocabulary [0, {vocab_size})")

"""What clients get back: a finished generation, and errors turned into exceptions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ModelMismatchError, RequestError, TandemError, WorkerDeadError
from protocol.messages import Chunk, Error


@dataclass
class GenerationOutput:
    text: str
    token_ids: list[int]
    finish_reason: str  # stop | length | cancelled
    stats: dict[str, Any] = field(default_factory=dict)  # tau, num_verifications, accepted_per_depth, ...


def collect(chunks: Iterable[Chunk]) -> GenerationOutput:
    text, token_ids = [], []
    for chunk in chunks:
        text.append(chunk.text)
        token_ids += chunk.token_ids
        if chunk.finish_reason is not None:
            return GenerationOutput("".join(text), token_ids, chunk.finish_reason, chunk.stats or {})
    raise TandemError("the stream ended without a finish reason")


def error_to_exception(error: Error) -> TandemError:
    message = f"{error.message} (request {error.request_id})" if error.request_id else error.message
    if error.code == "bad_request":
        return RequestError(message)
    if error.code == "model_mismatch":
        return ModelMismatchError(message)
    if error.code == "timeout":
        return WorkerDeadError(message)
    return TandemError(f"{error.code}: {message}")


def generate_message_fields(prompt_or_ids: str | list[int], max_new_tokens: int | None, temperature: float,
                            top_p: float, top_k: int, seed: int | None, stop: str | list[str] | None,
                            stop_token_ids: list[int] | None, ignore_eos: bool) -> dict[str, Any]:
    """Keyword arguments of a `Generate` message from the client API's arguments."""
    is_text = isinstance(prompt_or_ids, str)
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return {"prompt": prompt_or_ids if is_text else None,
            "prompt_ids": None if is_text else [int(t) for t in prompt_or_ids],
            "max_new_tokens": max_new_tokens, "temperature": float(temperature), "top_p": float(top_p),
            "top_k": int(top_k), "seed": seed, "stop": stops, "stop_token_ids": list(stop_token_ids or []),
            "ignore_eos": ignore_eos}

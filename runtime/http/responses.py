"""Response bodies and server-sent events in OpenAI's shapes, for completions and chat completions.

Every response has `usage`; the last choice carries Tandem's speculative stats in an extra `tandem`
field (τ, verifications, acceptance per depth).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

_FINISH = {"stop": "stop", "length": "length"}


def usage(num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": num_prompt_tokens, "completion_tokens": num_completion_tokens,
            "total_tokens": num_prompt_tokens + num_completion_tokens}


def finish_reason(reason: str) -> str:
    """Tandem's stop | length map to OpenAI's; anything else (cancelled) is passed on as it is."""
    return _FINISH.get(reason, reason)


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


@dataclass(frozen=True)
class Shape:
    """One response's identity and object names: completion or chat completion."""

    is_chat: bool
    model: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def _head(self, is_chunk: bool) -> dict[str, Any]:
        if self.is_chat:
            kind, prefix = ("chat.completion.chunk" if is_chunk else "chat.completion"), "chatcmpl-"
        else:
            kind, prefix = "text_completion", "cmpl-"
        return {"id": prefix + self.id, "object": kind, "created": self.created, "model": self.model}

    def response(self, text: str, reason: str, num_prompt_tokens: int, num_completion_tokens: int,
                 stats: dict[str, Any]) -> dict[str, Any]:
        """The whole answer of a non-streaming request."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason(reason)}
        if self.is_chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self._head(False), "choices": [choice], "usage": usage(num_prompt_tokens, num_completion_tokens),
                "tandem": stats}

    def chunk(self, text: str, reason: str | None = None, stats: dict[str, Any] | None = None,
              is_first: bool = False, with_usage: bool = False) -> dict[str, Any]:
        """One streamed delta; the last one has the finish reason and the stats."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None,
                                  "finish_reason": None if reason is None else finish_reason(reason)}
        if self.is_chat:
            choice["delta"] = {"role": "assistant", "content": text} if is_first else \
                ({"content": text} if text or reason is None else {})
        else:
            choice["text"] = text
        body = {**self._head(True), "choices": [choice]}
        if with_usage:
            body["usage"] = None  # as OpenAI: null until the final usage chunk
        if stats is not None:
            body["tandem"] = stats
        return body

    def usage_chunk(self, num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, Any]:
        """The final chunk of `stream_options.include_usage`: no choices, only usage."""
        return {**self._head(True), "choices": [], "usage": usage(num_prompt_tokens, num_completion_tokens)}

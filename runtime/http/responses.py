"""Response bodies and server-sent events in OpenAI's shapes, for completions and chat completions.

`Answer` follows one HTTP request's chunks (every prompt of a batch, every sample of `n`) and shapes
them: choice `prompt_index * n + sample`, each with its text, finish reason and logprobs when asked.
Every response has `usage` (prompt tokens once per prompt, completion tokens summed over choices);
`tandem` carries Tandem's speculative stats (τ, verifications, acceptance per depth): choice 0's at the
top, and each choice's own when there are several.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from protocol.logprobs import Logprobs
from protocol.messages import Chunk
from runtime.http.logprobs import TokenText, chat_content, completion_block, echo_entries, entries, extend_block

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

    def head(self, is_chunk: bool) -> dict[str, Any]:
        if self.is_chat:
            kind, prefix = ("chat.completion.chunk" if is_chunk else "chat.completion"), "chatcmpl-"
        else:
            kind, prefix = "text_completion", "cmpl-"
        return {"id": prefix + self.id, "object": kind, "created": self.created, "model": self.model}

    def usage_chunk(self, num_prompt_tokens: int, num_completion_tokens: int) -> dict[str, Any]:
        """The final chunk of `stream_options.include_usage`: no choices, only usage."""
        return {**self.head(True), "choices": [], "usage": usage(num_prompt_tokens, num_completion_tokens)}


@dataclass
class Choice:
    """One choice as its chunks arrive."""

    index: int
    texts: list[str] = field(default_factory=list)
    num_tokens: int = 0
    is_started: bool = False
    finish_reason: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    offset: int = 0  # completions: text offset of the next token
    logprobs: dict[str, Any] | None = None  # completions' block, or chat's {"content": [...]}


class Answer:
    """Shapes the chunks of one HTTP request (prompts x n samples) as OpenAI's response or stream events."""

    def __init__(self, shape: Shape, tokens: TokenText, prompts: list[list[int]], n: int,
                 num_logprobs: int | None, echo: list[str] | None = None, include_usage: bool = False) -> None:
        self.shape, self.tokens, self.prompts, self.n = shape, tokens, prompts, n
        self.num_logprobs, self.echo, self.include_usage = num_logprobs, echo, include_usage
        self.choices = [Choice(i) for i in range(len(prompts) * n)]
        self.prompt_logprobs: list[Logprobs | None] = [None] * len(prompts)
        self._waiting: dict[int, list[Chunk]] = {}  # per prompt: later samples' chunks until sample 0's arrives

    @property
    def echoes_logprobs(self) -> bool:
        return self.echo is not None and self.num_logprobs is not None

    def add(self, prompt: int, chunk: Chunk) -> list[dict[str, Any]]:
        """Take one chunk of prompt `prompt`; returns the stream events it releases.

        With echo and logprobs, every choice starts with the prompt's logprobs, which sample 0's first chunk
        carries: chunks of the other samples of that prompt wait for it.
        """
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs[prompt] = chunk.prompt_logprobs
        if self.echoes_logprobs and chunk.index > 0 and self.prompt_logprobs[prompt] is None:
            self._waiting.setdefault(prompt, []).append(chunk)
            return []
        events = [self._apply(prompt, chunk)]
        if self.prompt_logprobs[prompt] is not None:
            events += [self._apply(prompt, c) for c in self._waiting.pop(prompt, [])]
        return events

    def _apply(self, prompt: int, chunk: Chunk) -> dict[str, Any]:
        choice = self.choices[prompt * self.n + chunk.index]
        is_first, choice.is_started = not choice.is_started, True
        text = (self.echo[prompt] if self.echo is not None and is_first else "") + chunk.text
        choice.texts.append(text)
        choice.num_tokens += len(chunk.token_ids)
        piece = self._logprobs(choice, prompt, chunk, is_first)
        if chunk.finish_reason is not None:
            choice.finish_reason, choice.stats = finish_reason(chunk.finish_reason), chunk.stats or {}
        return self._event(choice, text, piece, is_first, chunk.finish_reason is not None)

    def _logprobs(self, choice: Choice, prompt: int, chunk: Chunk, is_first: bool) -> dict[str, Any] | None:
        """This chunk's logprobs, also added to the choice's whole."""
        if self.num_logprobs is None:
            return None
        logprobs = chunk.logprobs or Logprobs.empty()
        if self.shape.is_chat:
            piece = {"content": chat_content(self.tokens, logprobs)}
            choice.logprobs = choice.logprobs or {"content": []}
            choice.logprobs["content"] += piece["content"]
            return piece
        rows = entries(logprobs)
        if self.echo is not None and is_first:
            rows = echo_entries(self.prompts[prompt], self.prompt_logprobs[prompt]) + rows
        block = completion_block(self.tokens, rows, choice.offset)
        choice.offset += sum(len(t) for t in block["tokens"])
        if choice.logprobs is None:
            choice.logprobs = {key: [] for key in block}
        extend_block(choice.logprobs, block)
        return block

    def _event(self, choice: Choice, text: str, logprobs: dict[str, Any] | None, is_first: bool,
               is_last: bool) -> dict[str, Any]:
        body: dict[str, Any] = {**self.shape.head(True), "choices": [{
            "index": choice.index, "logprobs": logprobs, "finish_reason": choice.finish_reason if is_last else None,
            **self._delta(text, is_first, is_last)}]}
        if self.include_usage:
            body["usage"] = None  # as OpenAI: null until the final usage chunk
        if is_last:
            body["tandem"] = choice.stats
        return body

    def _delta(self, text: str, is_first: bool, is_last: bool) -> dict[str, Any]:
        if not self.shape.is_chat:
            return {"text": text}
        if is_first:
            return {"delta": {"role": "assistant", "content": text}}
        return {"delta": {"content": text} if text or not is_last else {}}

    # ---- the whole answer ---------------------------------------------------------------------------

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices)

    def response(self) -> dict[str, Any]:
        """The whole answer of a non-streaming request."""
        choices = []
        for choice in self.choices:
            body: dict[str, Any] = {"index": choice.index, "logprobs": choice.logprobs,
                                    "finish_reason": choice.finish_reason}
            text = "".join(choice.texts)
            if self.shape.is_chat:
                body["message"] = {"role": "assistant", "content": text}
            else:
                body["text"] = text
            if len(self.choices) > 1:
                body["tandem"] = choice.stats
            choices.append(body)
        return {**self.shape.head(False), "choices": choices,
                "usage": usage(self.num_prompt_tokens, self.num_completion_tokens), "tandem": self.choices[0].stats}

    def usage_chunk(self) -> dict[str, Any]:
        return self.shape.usage_chunk(self.num_prompt_tokens, self.num_completion_tokens)

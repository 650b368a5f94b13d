"""Logprobs in OpenAI's two shapes: completions' (tokens, token_logprobs, top_logprobs, text_offset) and
chat's (`content`: token, logprob, bytes, top_logprobs per token).

Token strings are each token decoded on its own (a byte-level token that holds part of a UTF-8
character decodes to U+FFFD, as in vLLM); `bytes` are that string's UTF-8 bytes.
"""

from __future__ import annotations

from typing import Any

from protocol.logprobs import Logprobs

Entry = tuple[int, float | None, list[tuple[int, float]] | None]  # token id, its logprob, alternatives


class TokenText:
    """Each token id's own text, decoded once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"token_id:{token_id}"  # vLLM's spelling when tokens are returned as ids
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text


def entries(logprobs: Logprobs) -> list[Entry]:
    return [(token, value, logprobs.top(i)) for i, (token, value) in enumerate(zip(logprobs.token_ids,
                                                                                  logprobs.logprobs, strict=True))]


def echo_entries(prompt_ids: list[int], prompt_logprobs: Logprobs | None) -> list[Entry]:
    """The prompt's tokens: the first has no logprob (nothing predicts it), the others from the prefill."""
    return [(prompt_ids[0], None, None), *(entries(prompt_logprobs) if prompt_logprobs is not None else [])]


def completion_block(text: TokenText, rows: list[Entry], offset: int) -> dict[str, Any]:
    """Completions' logprobs of `rows`; `offset` is the first token's position in the choice's text.

    top_logprobs holds the N alternatives and the chosen token (so N + 1 entries at most, as OpenAI)."""
    tokens = [text(token) for token, _, _ in rows]
    offsets = []
    for token_text in tokens:
        offsets.append(offset)
        offset += len(token_text)
    tops: list[dict[str, float] | None] = []
    for (_, value, top), token_text in zip(rows, tokens, strict=True):
        if top is None or value is None:
            tops.append(None)
            continue
        alternatives = {text(t): v for t, v in top}
        alternatives.setdefault(token_text, value)
        tops.append(alternatives)
    return {"tokens": tokens, "token_logprobs": [value for _, value, _ in rows], "top_logprobs": tops,
            "text_offset": offsets}


def extend_block(block: dict[str, Any], more: dict[str, Any]) -> None:
    for key, values in more.items():
        block[key].extend(values)


def chat_content(text: TokenText, logprobs: Logprobs) -> list[dict[str, Any]]:
    """Chat's `logprobs.content` entries for these tokens (top_logprobs: the N most likely, best first)."""

    def item(token: int, value: float) -> dict[str, Any]:
        token_text = text(token)
        return {"token": token_text, "logprob": value, "bytes": list(token_text.encode("utf-8"))}

    return [{**item(token, value), "top_logprobs": [item(t, v) for t, v in top]}
            for token, value, top in entries(logprobs) if value is not None and top is not None]

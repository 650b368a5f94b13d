"""Chat records as training tokens: the tokenizer's chat template renders each conversation, and a mask
marks the assistant replies, the only tokens a drafter trained on chat data learns to predict.

How replies are found: for assistant turn i the template renders messages[:i] with the generation prompt
and messages[:i+1] without it; both renderings must be prefixes of the whole conversation's, and the reply
is the text between them less trailing whitespace: the content plus the end-of-turn marker the template
writes after it (ChatML's "<|im_end|>", Llama 3's "<|eot_id|>"), i.e. what the model generates. The
rendering is then tokenized piece by piece, prompt pieces and reply pieces separately, as at inference
(the prompt is tokenized, the reply is generated after it), so the mask is exact by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from workers.training.corpus import Document, Message
from workers.training.tokens import encode_texts

ASSISTANT = "assistant"


def set_chat_template(tokenizer: Any, path: str | Path | None) -> None:
    """Replace the tokenizer's chat template with the Jinja template in `path` (None: keep its own)."""
    if path is not None:
        tokenizer.chat_template = Path(path).read_text(encoding="utf-8")


def render(tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """The chat template's text for `messages`."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the corpus holds chat records ('messages') but the tokenizer has no chat template; "
                         "give one (scripts/train_drafter.py --chat-template FILE, a Jinja template)")
    turns = [{"role": role, "content": content} for role, content in messages]
    text: str = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=add_generation_prompt)
    return text


def reply_spans(tokenizer: Any, messages: Sequence[Message], name: str = "?") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the [start, end) character spans of its assistant replies."""
    full = render(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for i, (role, _) in enumerate(messages):
        if role != ASSISTANT:
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(prompt) and full.startswith(upto)):
            raise ValueError(f"chat record {name}: the template's rendering of the first {i} turns is not a prefix "
                             "of the whole conversation's (it rewrites earlier turns), so assistant replies cannot "
                             "be located; use a template that renders turns append-only (--chat-template FILE)")
        spans.append((len(prompt), len(upto.rstrip())))
    return full, spans


def pieces(text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[str, bool]]:
    """`text` cut at the span edges: (piece, is_reply), empty pieces dropped."""
    out, cursor = [], 0
    for start, end in spans:
        out += [(text[cursor:start], False), (text[start:end], True)]
        cursor = end
    out.append((text[cursor:], False))
    return [(piece, is_reply) for piece, is_reply in out if piece]


def encode_chats(tokenizer: Any, docs: Sequence[Document]) -> list[tuple[list[int], list[bool]]]:
    """Per chat document: (token ids, is-assistant-reply mask), no tokens added beyond the template's."""
    cut = [pieces(*reply_spans(tokenizer, doc.messages or (), doc.name)) for doc in docs]
    flat = encode_texts(tokenizer, [piece for doc_pieces in cut for piece, _ in doc_pieces])
    out, k = [], 0
    for doc_pieces in cut:
        ids: list[int] = []
        mask: list[bool] = []
        for _, is_reply in doc_pieces:
            ids += flat[k]
            mask += [is_reply] * len(flat[k])
            k += 1
        out.append((ids, mask))
    return out

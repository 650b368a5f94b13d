"""Chat records: the template renders them, and the mask covers exactly the assistant replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from workers.training.chat import encode_chats, reply_spans, set_chat_template
from workers.training.corpus import Document, read_corpus
from workers.training.dataset import build_stream, document_ids
from workers.training.tokens import encode_stream

TOKENIZER = Path(__file__).resolve().parents[3] / "models" / "demo" / "tokenizer"
# ChatML-like, with the demo tokenizer's special tokens as turn markers
TEMPLATE = ("{% for m in messages %}<|bos|>{{ m['role'] }}\n{{ m['content'] }}<|eos|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}")
CHAT = (("system", "Answer in Python."), ("user", "How do I add one to x?"), ("assistant", "x += 1"),
        ("user", "And print it?"), ("assistant", "print(x)  # shows x"))


@pytest.fixture
def tokenizer(tmp_path: Path) -> Any:
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    (tmp_path / "chat.jinja").write_text(TEMPLATE)
    set_chat_template(tok, tmp_path / "chat.jinja")
    return tok


def runs(ids: list[int], mask: list[bool]) -> list[list[int]]:
    """The maximal runs of masked tokens."""
    out: list[list[int]] = []
    for i, (token, is_reply) in enumerate(zip(ids, mask, strict=True)):
        if is_reply:
            if i == 0 or not mask[i - 1]:
                out.append([])
            out[-1].append(token)
    return out


def test_mask_covers_exactly_the_assistant_replies(tokenizer: Any) -> None:
    ids, mask = encode_chats(tokenizer, [Document("0", "", CHAT)])[0]
    replies = [tokenizer.decode(run) for run in runs(ids, mask)]
    assert replies == ["x += 1<|eos|>", "print(x)  # shows x<|eos|>"]  # content + end of turn, nothing else
    # the unmasked tokens are all the rest: system and user turns and the templates' headers
    rest = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if not m])
    assert rest == ("<|bos|>system\nAnswer in Python.<|eos|>\n<|bos|>user\nHow do I add one to x?<|eos|>\n"
                    "<|bos|>assistant\n\n<|bos|>user\nAnd print it?<|eos|>\n<|bos|>assistant\n\n")
    # each reply's tokens are what the tokenizer makes of the reply on its own, as generated after the prompt
    assert runs(ids, mask)[0] == tokenizer.encode("x += 1<|eos|>", add_special_tokens=False)
    text, spans = reply_spans(tokenizer, CHAT)
    assert text == tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in CHAT], tokenize=False)
    assert [text[a:b] for a, b in spans] == replies


def test_stream_trains_only_positions_before_reply_tokens(tokenizer: Any, tmp_path: Path) -> None:
    corpus = tmp_path / "mixed.jsonl"
    chat = {"messages": [{"role": r, "content": c} for r, c in CHAT]}
    corpus.write_text(json.dumps(chat) + "\n" + json.dumps({"text": "plain text"}) + "\n")
    docs = read_corpus(str(corpus), "all")
    assert docs[0].messages == CHAT and docs[1].messages is None
    stream = build_stream(tokenizer, docs)
    chat_ids, chat_mask = encode_chats(tokenizer, docs[:1])[0]
    plain = [*tokenizer.encode("plain text", add_special_tokens=False), tokenizer.eos_token_id]
    assert stream.ids.tolist() == chat_ids + plain  # no EOS after a chat record: its template delimits it
    assert stream.is_target.tolist() == chat_mask + [True] * len(plain)
    weights = stream.position_weights  # position i is trained on when token i + 1 is a target
    assert weights[:-1].tolist() == stream.is_target[1:].tolist() and not weights[-1]
    user = tokenizer.encode("How do I add one to x?", add_special_tokens=False)
    start = next(i for i in range(len(chat_ids)) if chat_ids[i:i + len(user)] == user)
    assert not stream.is_target[start:start + len(user)].any()  # user tokens are never targets
    assert document_ids(tokenizer, docs) == [chat_ids, plain[:-1]]


def test_chat_errors_are_explicit(tokenizer: Any, tmp_path: Path) -> None:
    bare = AutoTokenizer.from_pretrained(str(TOKENIZER))
    with pytest.raises(ValueError, match=r"no chat template.*--chat-template"):
        encode_chats(bare, [Document("0", "", CHAT)])
    # a template that rewrites earlier turns once the conversation goes on (here: numbers the turns backwards)
    tokenizer.chat_template = ("{% for m in messages %}{{ messages|length - loop.index }}:{{ m['content'] }}\n"
                               "{% endfor %}")
    with pytest.raises(ValueError, match="not a prefix"):
        encode_chats(tokenizer, [Document("7", "", CHAT)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(ValueError, match="'role' and 'content'"):
        read_corpus(str(bad), "all")
    assert torch.equal(build_stream(tokenizer, [Document("t", "a")]).is_target, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="chat records"):
        encode_stream(tokenizer, [Document("0", "", CHAT)])  # the plain-text path refuses chat records

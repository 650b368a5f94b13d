"""A corpus split as one training token stream, plain text, chat and token-id records alike, with the
positions whose next token is trained on (all of plain text; only assistant replies of chat records; the
continuation after `prompt_len` of a token-id record).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workers.training.chat import encode_chats
from workers.training.corpus import Document
from workers.training.tokens import encode_documents


@dataclass(frozen=True)
class TokenStream:
    """Documents joined in corpus order: plain text followed by EOS, chat records as the template renders
    them (the template delimits conversations itself), token-id records as stored followed by EOS (unless
    they end with one; that separator is not a target)."""

    ids: torch.Tensor  # [N] int64
    is_target: torch.Tensor  # [N] bool: a token the model learns to predict

    @property
    def position_weights(self) -> torch.Tensor:
        """[N] bool: position i's next-token prediction is trained on (ids[i + 1] is a target)."""
        return torch.cat([self.is_target[1:], torch.zeros(1, dtype=torch.bool)])

    @property
    def is_masked(self) -> bool:
        return not bool(self.is_target.all())


def build_stream(tokenizer: Any, docs: Sequence[Document]) -> TokenStream:
    """The stream of `docs` (chat records need the tokenizer's chat template)."""
    if not docs:
        raise ValueError("the corpus split is empty: no documents to encode")
    chats = iter(encode_chats(tokenizer, [d for d in docs if d.is_chat]))
    texts = iter(encode_documents(tokenizer, [d for d in docs if not (d.is_chat or d.is_ids)]))
    eos = int(tokenizer.eos_token_id)
    ids: list[int] = []
    is_target: list[bool] = []
    for doc in docs:
        if doc.is_chat:
            doc_ids, mask = next(chats)
        elif doc.ids is not None:
            doc_ids, mask = _ids_record(doc.ids, doc.num_prompt_ids, eos)
        else:
            doc_ids = [*next(texts), eos]
            mask = [True] * len(doc_ids)
        ids += doc_ids
        is_target += mask
    return TokenStream(torch.tensor(ids, dtype=torch.long), torch.tensor(is_target, dtype=torch.bool))


def _ids_record(doc_ids: Sequence[int], num_prompt_ids: int, eos: int) -> tuple[list[int], list[bool]]:
    """A token-id record's ids (EOS-terminated) and targets: the continuation, not the prompt or the separator."""
    ids = list(doc_ids)
    mask = [False] * num_prompt_ids + [True] * (len(ids) - num_prompt_ids)
    if ids[-1] != eos:
        ids.append(eos)
        mask.append(False)
    return ids, mask


def document_ids(tokenizer: Any, docs: Sequence[Document]) -> list[list[int]]:
    """Each document's token ids: plain text as is, chat records rendered by the template, id records as stored."""
    chats = iter(encode_chats(tokenizer, [d for d in docs if d.is_chat]))
    texts = iter(encode_documents(tokenizer, [d for d in docs if not (d.is_chat or d.is_ids)]))
    return [next(chats)[0] if d.is_chat else list(d.ids) if d.ids is not None else next(texts) for d in docs]

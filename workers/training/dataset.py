"""A corpus split as one training token stream, plain text and chat records alike, with the positions
whose next token is trained on (all of plain text; only assistant replies of chat records).
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
    them (the template delimits conversations itself)."""

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
    texts = iter(encode_documents(tokenizer, [d for d in docs if not d.is_chat]))
    eos = int(tokenizer.eos_token_id)
    ids: list[int] = []
    is_target: list[bool] = []
    for doc in docs:
        if doc.is_chat:
            doc_ids, mask = next(chats)
        else:
            doc_ids = [*next(texts), eos]
            mask = [True] * len(doc_ids)
        ids += doc_ids
        is_target += mask
    return TokenStream(torch.tensor(ids, dtype=torch.long), torch.tensor(is_target, dtype=torch.bool))


def document_ids(tokenizer: Any, docs: Sequence[Document]) -> list[list[int]]:
    """Each document's token ids: plain text as is, chat records rendered by the template."""
    chats = iter(encode_chats(tokenizer, [d for d in docs if d.is_chat]))
    texts = iter(encode_documents(tokenizer, [d for d in docs if not d.is_chat]))
    return [next(chats)[0] if d.is_chat else next(texts) for d in docs]

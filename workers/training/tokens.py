"""Token streams for training: documents encoded and joined with EOS, random training windows drawn
deterministically per step, fixed held-out evaluation windows and held-out prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from workers.training.corpus import Document


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Each text's token ids (no special tokens added; those written in the text are still recognised)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer._tokenizer
    return [list(enc.ids) for enc in backend.encode_batch(list(texts), add_special_tokens=False)]


def encode_stream(tokenizer: Any, docs: Sequence[Document]) -> torch.Tensor:
    """[N] int64: every document's tokens followed by EOS, in corpus order."""
    if not docs:
        raise ValueError("the corpus split is empty: no documents to encode")
    eos = int(tokenizer.eos_token_id)
    ids = [token for doc_ids in encode_documents(tokenizer, docs) for token in [*doc_ids, eos]]
    return torch.tensor(ids, dtype=torch.long)


def encode_documents(tokenizer: Any, docs: Sequence[Document]) -> list[list[int]]:
    """Each plain-text document's token ids (no special tokens); chat records go through dataset.build_stream."""
    if any(d.is_ids for d in docs):
        raise ValueError("token-id records need workers.training.dataset.build_stream (scripts/train_drafter.py)")
    chats = [d.name for d in docs if d.is_chat]
    if chats:
        raise ValueError(f"chat records ({len(chats)}, e.g. {chats[0]!r}) need the chat template: only "
                         "scripts/train_drafter.py trains on 'messages' corpora")
    return encode_texts(tokenizer, [d.text for d in docs])


def step_generator(seed: int, step: int) -> torch.Generator:
    """The RNG of one training step: batches depend on (seed, step) only, so a resumed run sees the same data."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def random_windows(stream: torch.Tensor, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """[B, length] windows starting at uniformly random offsets of `stream`."""
    return stream[window_index(stream.numel(), batch_size, length, generator)]


def window_index(num_tokens: int, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """[B, length] indices of windows at uniformly random offsets of a stream of `num_tokens`."""
    if num_tokens <= length:
        raise ValueError(f"the token stream has {num_tokens} tokens, fewer than one window of {length + 1}")
    starts = torch.randint(0, num_tokens - length, (batch_size,), generator=generator)
    return starts[:, None] + torch.arange(length)[None, :]


def eval_windows(stream: torch.Tensor, length: int, max_windows: int) -> torch.Tensor:
    """[W, length] non-overlapping windows from the start of `stream`, spread evenly over it."""
    starts = eval_window_starts(stream.numel(), length, max_windows)
    return stream[torch.tensor(starts, dtype=torch.long)[:, None] + torch.arange(length)[None, :]]


def eval_window_starts(num_tokens: int, length: int, max_windows: int) -> list[int]:
    """Stream offsets of the `eval_windows`: the stream cut into windows of `length`, up to
    `max_windows` of them picked evenly from first to last."""
    total = num_tokens // length
    if total == 0:
        raise ValueError(f"the held-out stream has {num_tokens} tokens, fewer than one window of {length}")
    picks = sorted({round(float(x)) for x in torch.linspace(0, total - 1, min(max_windows, total))})
    return [pick * length for pick in picks]


def stream_owners(doc_lengths: Sequence[int], offsets: Sequence[int]) -> list[int]:
    """For each stream offset, the index of the document it falls in (`encode_stream` layout: each
    document's tokens then one EOS, which belongs to that document)."""
    ends = torch.tensor(doc_lengths, dtype=torch.long).add(1).cumsum(0)
    return [int(i) for i in torch.searchsorted(ends, torch.tensor(offsets, dtype=torch.long), right=True)]


def held_out_prompts(doc_ids: Sequence[Sequence[int]], num_prompts: int, min_len: int = 64,
                     max_len: int = 128, seed: int = 0) -> list[list[int]]:
    """`num_prompts` prompts of min_len..max_len tokens, cut at random offsets of distinct held-out documents
    (round-robin over documents long enough to give one)."""
    rng = torch.Generator().manual_seed(seed)
    usable = [ids for ids in doc_ids if len(ids) >= max_len + 1]
    if not usable:
        raise ValueError(f"no held-out document has more than {max_len} tokens")
    order = torch.randperm(len(usable), generator=rng).tolist()
    prompts = []
    for i in range(num_prompts):
        ids = usable[order[i % len(order)]]
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=rng))
        start = int(torch.randint(0, len(ids) - length + 1, (1,), generator=rng))
        prompts.append(list(ids[start:start + length]))
    return prompts

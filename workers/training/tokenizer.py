"""Byte-level BPE tokenizer training with HF `tokenizers`, saved as a PreTrainedTokenizerFast directory
that `AutoTokenizer.from_pretrained(dir)` loads (pad / bos / eos special tokens at ids 0 / 1 / 2).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from workers.training.corpus import Document

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2


def train_bpe(docs: Sequence[Document], vocab_size: int = 4096, min_frequency: int = 2) -> Any:
    """Train a GPT-2 style byte-level BPE on `docs` (no automatic bos / eos on encode)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)}, got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(_texts(docs), trainer=trainer, length=len(docs))
    fast: Any = PreTrainedTokenizerFast  # untyped in transformers' stubs
    return fast(tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   model_max_length=1024, clean_up_tokenization_spaces=False)


def _texts(docs: Sequence[Document]) -> Iterator[str]:
    for doc in docs:
        yield doc.text


def save_tokenizer(tokenizer: Any, directory: str | Path) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))

"""The target's own text: prompts cut from a corpus split, continued by the frozen target (greedy and
sampled), kept with the positions whose next token the target wrote. Hidden Transfer is trained and
evaluated on this text, because at inference its pseudo states follow the target's own outputs.

Plain documents give windows of `prompt_tokens` at random offsets; chat records give the conversation up
to the first assistant reply as the template renders it (the reply is then the target's, not the record's).
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
class SelfText:
    """Samples padded to one length: ids [N, S] (pad 0), weights [N, S] bool (position i's prediction, of
    ids[i + 1], is the target's own continuation)."""

    ids: torch.Tensor
    weights: torch.Tensor

    def save(self, path: str) -> None:
        torch.save({"ids": self.ids, "weights": self.weights}, path)

    @classmethod
    def load(cls, path: str) -> SelfText:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return cls(blob["ids"], blob["weights"])

    @property
    def num_generated(self) -> int:
        return int(self.weights.sum())


def corpus_prompts(tokenizer: Any, docs: Sequence[Document], num_prompts: int, prompt_tokens: int,
                   seed: int) -> list[list[int]]:
    """`num_prompts` prompts: random windows of plain documents, chat prefixes up to the first reply."""
    rng = torch.Generator().manual_seed(seed)
    plain = [ids for ids in encode_documents(tokenizer, [d for d in docs if not d.is_chat])
             if len(ids) > prompt_tokens]
    chats = []
    for ids, mask in encode_chats(tokenizer, [d for d in docs if d.is_chat]):
        if True in mask:
            chats.append(ids[: mask.index(True)][-prompt_tokens:])
    pool: list[list[int] | None] = [*chats, *[None] * len(plain)]
    if not pool:
        raise ValueError(f"no document gives a prompt: plain texts need more than {prompt_tokens} tokens, "
                         "chat records an assistant reply")
    prompts = []
    order = torch.randperm(len(pool), generator=rng).tolist()
    for i in range(num_prompts):
        pick = order[i % len(order)]
        if pick < len(chats):
            prompts.append(list(chats[pick]))
            continue
        ids = plain[pick - len(chats)]
        start = int(torch.randint(0, len(ids) - prompt_tokens + 1, (1,), generator=rng))
        prompts.append(list(ids[start:start + prompt_tokens]))
    return prompts


@torch.no_grad()
def continue_prompts(model: Any, prompts: Sequence[list[int]], new_tokens: int, batch_size: int = 32,
                     sample_share: float = 0.5, temperature: float = 1.0, seed: int = 0,
                     eos_id: int | None = None, pad_id: int = 0) -> SelfText:
    """The target continues every prompt by up to `new_tokens` (left-padded batches; the first
    `1 - sample_share` of the prompts greedily, the rest sampled at `temperature`); stops after EOS."""
    device = model.get_output_embeddings().weight.device
    num_greedy = round(len(prompts) * (1 - sample_share))
    samples: list[tuple[list[int], int]] = []  # (ids, prompt length)
    for begin in range(0, len(prompts), batch_size):
        batch = list(prompts[begin:begin + batch_size])
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros(len(batch), width, dtype=torch.long)
        for b, prompt in enumerate(batch):
            ids[b, width - len(prompt):] = torch.tensor(prompt)
            attention[b, width - len(prompt):] = 1
        for is_greedy in (True, False):
            rows = [b for b in range(len(batch)) if (begin + b < num_greedy) == is_greedy]
            if not rows:
                continue
            torch.manual_seed(seed + begin)
            out = model.generate(ids[rows].to(device), attention_mask=attention[rows].to(device),
                                 max_new_tokens=new_tokens, do_sample=not is_greedy,
                                 temperature=temperature if not is_greedy else None, top_k=0 if not is_greedy else None,
                                 top_p=None, pad_token_id=pad_id, eos_token_id=eos_id)
            for row, generated in zip(rows, out[:, width:].tolist(), strict=True):
                if eos_id is not None and eos_id in generated:
                    generated = generated[: generated.index(eos_id) + 1]
                samples.append((batch[row] + generated, len(batch[row])))
    return pack(samples, pad_id)


def pack(samples: Sequence[tuple[list[int], int]], pad_id: int = 0) -> SelfText:
    """(ids, prompt length) pairs as padded tensors; weights mark positions prompt_len - 1 .. len - 2."""
    length = max(len(ids) for ids, _ in samples)
    ids = torch.full((len(samples), length), pad_id, dtype=torch.long)
    weights = torch.zeros(len(samples), length, dtype=torch.bool)
    for i, (sample, prompt_len) in enumerate(samples):
        ids[i, : len(sample)] = torch.tensor(sample)
        weights[i, prompt_len - 1: len(sample) - 1] = True
    return SelfText(ids, weights)

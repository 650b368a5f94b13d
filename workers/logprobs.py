"""Log-probabilities of chosen tokens from the target's logits (pure functions on tensors).

Always the raw distribution: log_softmax of the logits as the model produced them (temperature 1, no
top-k / top-p), whatever sampling settings chose the token (protocol/logprobs.py says why).
Computed only for requests that ask, from logits the verification already has: no extra forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from protocol.logprobs import Logprobs


def token_logprobs(logits: torch.Tensor, token_ids: Sequence[int], num_top: int) -> Logprobs:
    """logits [k, V] (row i: the distribution token_ids[i] was chosen from) -> their Logprobs, N = num_top."""
    if logits.shape[0] != len(token_ids):
        raise ValueError(f"{logits.shape[0]} rows of logits for {len(token_ids)} tokens")
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # [k, V]
    ids = torch.tensor(list(token_ids), dtype=torch.long, device=log_probs.device)
    chosen = log_probs.gather(-1, ids[:, None])[:, 0]  # [k]
    top = torch.topk(log_probs, min(num_top, log_probs.shape[-1]), dim=-1)  # sorted, best first
    return Logprobs([int(t) for t in token_ids], chosen.cpu().tolist(), top.indices.cpu().tolist(),
                    top.values.cpu().tolist())


def committed_rows(path: torch.Tensor) -> torch.Tensor:
    """Rows of a verification's logits [1 + n, V] that chose the committed tokens: after the root (the
    first accepted node or the bonus), then after each accepted node."""
    return torch.cat([torch.zeros(1, dtype=torch.long), path.cpu().to(torch.long) + 1])


def prompt_logprobs(logits: torch.Tensor, prompt_ids: Sequence[int], start: int, num_top: int) -> Logprobs:
    """Log-probabilities of prompt tokens from one prefill chunk's logits.

    logits [n, V] are those after prompt positions start .. start + n - 1; row i predicts token
    start + i + 1. The row after the prompt's last token predicts the first generated token, not a
    prompt token, and is left out.
    """
    num = min(logits.shape[0], len(prompt_ids) - 1 - start)
    if num <= 0:
        return Logprobs.empty()
    return token_logprobs(logits[:num], prompt_ids[start + 1: start + 1 + num], num_top)

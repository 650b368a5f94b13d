"""One verification step on the target: tree forward, the target's choice per node, acceptance, compaction."""

from __future__ import annotations

import torch

from workers.acceptance import accept_path
from workers.sampling import SamplingParams, choose_tokens
from workers.target import TargetVerifier, VerifierState
from workers.tree import DraftTree


def verify_and_accept(target: TargetVerifier, state: VerifierState, length: int, root: int, draft: DraftTree,
                      params: SamplingParams, max_nodes: int | None = None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Verify `draft` below the root x[C-1] (C = `length`) and keep the accepted path in the target's cache.

    Returns (accepted node indices in depth order, bonus token, features [N+1, H] of root + nodes).
    """
    logits, hidden = target.verify(state, root, draft, max_nodes)
    positions = length + torch.cat([torch.zeros(1, dtype=torch.long), draft.depths])  # position each row predicts
    path, bonus = accept_path(draft, choose_tokens(logits, params, positions))
    target.accept(state, path)
    return path, bonus, hidden


def committed_features(hidden: torch.Tensor, path: torch.Tensor) -> torch.Tensor:
    """Features [1 + len(path), H] of the root and the accepted nodes: the newly committed positions."""
    return hidden[torch.cat([torch.zeros(1, dtype=torch.long), path.to(torch.long) + 1]).to(hidden.device)]

"""Checks on a draft tree as it arrives at the coordinator, before any verifier sees it.

A drafter's tree is forwarded to the verifier untouched; a malformed one (wrong dtypes or shapes, a
parent after its child, a token outside the vocabulary, more nodes than the budget) is caught here,
without torch, so a buggy or hostile drafter can neither fail a request nor crash a verifier.
"""

from __future__ import annotations

from protocol.messages import Blob, Draft

_ROOT = -1
MAX_TREE_NODES = 1024  # the most nodes one draft may carry (its ancestor matrix is N x N at the verifier)


def draft_problem(draft: Draft, max_nodes: int, vocab_size: int) -> str | None:
    """What is wrong with this draft's tree, or None when it is well formed."""
    fields = {"token_ids": (draft.token_ids, "int64"), "parents": (draft.parents, "int64"),
              "probs": (draft.probs, "float32")}
    for name, (blob, dtype) in fields.items():
        if blob.dtype != dtype or len(blob.shape) != 1:
            return f"draft.{name} must be a 1-D {dtype} tensor, got {blob.dtype}{list(blob.shape)}"
    num_nodes = draft.token_ids.shape[0]
    if draft.parents.shape[0] != num_nodes or draft.probs.shape[0] != num_nodes:
        return "draft tree tensors must have equal lengths"
    if num_nodes > max_nodes:
        return f"draft tree has {num_nodes} nodes, the budget is {max_nodes}"
    tokens, parents = _values(draft.token_ids), _values(draft.parents)
    if not 0 <= draft.root < vocab_size or any(not 0 <= t < vocab_size for t in tokens):
        return f"draft token ids must be in [0, {vocab_size})"
    if any(not _ROOT <= p < i for i, p in enumerate(parents)):
        return "a draft node's parent must be the root or an earlier node"
    return None


def _values(blob: Blob) -> list[int]:
    """An int64 tensor's values (its byte count was checked by the codec)."""
    return list(memoryview(blob.data).cast("B").cast("q"))

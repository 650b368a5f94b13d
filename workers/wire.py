"""torch tensors <-> wire `Blob`s, without copies where the layout allows."""

from __future__ import annotations

import torch

from protocol.messages import Blob
from workers.tree import DraftTree

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "int64": torch.int64, "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


def to_blob(tensor: torch.Tensor) -> Blob:
    """A contiguous CPU copy only when needed; the bytes are shared with the tensor otherwise."""
    tensor = tensor.detach().contiguous().cpu()
    raw = tensor.reshape(-1).view(torch.uint8) if tensor.numel() else torch.zeros(0, dtype=torch.uint8)
    return Blob(_NAMES[tensor.dtype], tuple(tensor.shape), memoryview(raw.numpy()))  # type: ignore[arg-type]


def from_blob(blob: Blob) -> torch.Tensor:
    """A tensor viewing the frame's bytes (read-only frames are copied once)."""
    dtype = _DTYPES[blob.dtype]
    view = memoryview(blob.data)
    if view.nbytes == 0:
        return torch.zeros(blob.shape, dtype=dtype)
    buffer = view if not view.readonly else bytearray(view)
    return torch.frombuffer(buffer, dtype=dtype).reshape(blob.shape)


def tree_blobs(tree: DraftTree) -> tuple[Blob, Blob, Blob]:
    return to_blob(tree.token_ids), to_blob(tree.parents), to_blob(tree.probs.float())


def tree_from_blobs(token_ids: Blob, parents: Blob, probs: Blob) -> DraftTree:
    """Rebuild a tree from the wire, validating its structure (ValueError when malformed)."""
    tokens, parent_ids, node_probs = from_blob(token_ids), from_blob(parents), from_blob(probs)
    if not (tokens.dim() == parent_ids.dim() == node_probs.dim() == 1
            and tokens.numel() == parent_ids.numel() == node_probs.numel()):
        raise ValueError("draft tree tensors must be 1-D and of equal length")
    return DraftTree.from_tensors(tokens, parent_ids, node_probs)

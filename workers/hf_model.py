"""Loading a Hugging Face causal LM from a local checkpoint directory (never from a hub)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                   attn_implementation: str = "sdpa") -> Any:
    auto: Any = AutoModelForCausalLM  # typed as a decorator wrapper in transformers' stubs
    model = auto.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True)
    return model.to(device).eval()

"""Tiny randomly initialised HF models for tests (built from a config, never downloaded)."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.cache_utils import CacheLayerMixin

ARCHS: dict[str, tuple[type[PreTrainedConfig], type[PreTrainedModel]]] = {
    "llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM)}


def tiny_model(arch: str = "llama", seed: int = 0, vocab_size: int = 96, hidden_size: int = 64,
               num_layers: int = 2, attn: str = "sdpa", **overrides: Any) -> Any:
    """A tiny causal LM; initializer_range 0.2 makes its distributions peaked like a trained model's."""
    config_cls, model_cls = ARCHS[arch]
    settings: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, initializer_range=0.2, eos_token_id=2, bos_token_id=1, pad_token_id=0)
    settings.update(overrides)
    config = config_cls(**settings)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = model_cls(config)
    model.train(False)  # = eval(), which transformers leaves unannotated
    return model


def layer_kv(layer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values of a filled attention-cache layer (a transformers `Cache`'s `layers` entry)."""
    assert isinstance(layer, CacheLayerMixin)
    assert isinstance(layer.keys, torch.Tensor) and isinstance(layer.values, torch.Tensor)
    return layer.keys, layer.values


def hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """The reference: transformers' own greedy generate, stopping at the model's EOS."""
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=model.config.pad_token_id)
    return [int(t) for t in out[0, len(prompt):]]


def top2_gap(model: Any, ids: list[int]) -> float:
    """Gap between the target's two largest logits after `ids` (full forward, fp32)."""
    with torch.no_grad():
        top = model(torch.tensor([ids])).logits[0, -1].topk(2).values
    return float(top[0] - top[1])

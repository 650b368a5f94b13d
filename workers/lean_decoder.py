"""A lean forward for Llama-family decoders: transformers' own math, op for op, without the module machinery.

On a small target most of a forward is not matrix products but the Python around them: every decoder
layer is a dozen `nn.Module` calls, each through hooks, keyword plumbing and output capture, and the model
builds its mask and output objects on every call. `LeanDecoder` runs the same tensors through the same
operations in the same order, reading the loaded modules' weights, so its hidden states are bitwise those
of `decoder(...)` (tests/workers/test_lean_decoder.py); it is a faster way to call the loaded HF model, not
another model. The attention itself is transformers' `sdpa_attention_forward` (its GQA handling included)
and the rotary tables come from the model's own `rotary_emb`.

It serves Llama, Mistral and Qwen2 decoders with `sdpa` attention and SiLU MLPs whose linear layers are
plain `nn.Linear`; anything else (another architecture, `eager` attention, quantised or hooked modules)
gets `None` from `LeanDecoder.build` and runs through `decoder(...)` as before. `LeanLayers` is the layer
loop alone, for stacks of such layers outside an HF decoder (the Falcon drafter's). Hooks are looked for
when it is built, with the model loaded; a hook registered on a module later is not run (set
`verifier.lean_forward: false` to instrument the modules).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

SUPPORTED_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")
SUPPORTED_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")


@dataclass(frozen=True)
class _Layer:
    attention: nn.Module  # for sdpa_attention_forward (reads num_key_value_groups, is_causal)
    input_norm: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    post_norm: nn.Module
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    head_dim: int
    scaling: float


def rms_norm(norm: Any, hidden: torch.Tensor) -> torch.Tensor:
    """transformers' LlamaRMSNorm.forward, the same operations in the same order."""
    dtype = hidden.dtype
    x = hidden.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + norm.variance_epsilon)
    out: torch.Tensor = norm.weight * x.to(dtype)
    return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _hooked(modules: Iterable[nn.Module]) -> str | None:
    """A module whose forward hooks (or accelerate's offloading hook) the lean path would skip."""
    for module in modules:
        if getattr(module, "_hf_hook", None) is not None or module._forward_hooks or module._forward_pre_hooks:
            return f"{type(module).__name__} carries hooks (offloading or instrumentation)"
    return None


def unsupported_layers(layers: Sequence[Any], config: Any) -> str | None:
    """Why this stack of decoder layers cannot run lean (None: it can)."""
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return f"attention implementation {getattr(config, '_attn_implementation', None)!r} (only sdpa runs lean)"
    if getattr(config, "hidden_act", None) != "silu":
        return f"activation {getattr(config, 'hidden_act', None)!r}"
    for layer in layers:
        if type(layer).__name__ not in SUPPORTED_LAYERS:
            return f"decoder layer {type(layer).__name__}"
        hooked = _hooked(layer.modules())
        if hooked is not None:
            return hooked
        attention, mlp = layer.self_attn, layer.mlp
        linears = [getattr(attention, n, None) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
        linears += [getattr(mlp, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
        if any(type(linear) is not nn.Linear for linear in linears):
            return "a projection that is not a plain nn.Linear (quantised or adapted)"
        if type(mlp.act_fn).__name__ not in ("SiLU", "SiLUActivation"):
            return f"MLP activation {type(mlp.act_fn).__name__}"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if type(norm).__name__ not in SUPPORTED_NORMS:
                return f"norm {type(norm).__name__}"
    return None


def unsupported(decoder: Any) -> str | None:
    """Why `decoder` cannot run lean (None: it can)."""
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(decoder, name):
            return f"decoder has no {name}"
    if type(decoder.norm).__name__ not in SUPPORTED_NORMS:
        return f"final norm {type(decoder.norm).__name__}"
    hooked = _hooked([decoder, decoder.embed_tokens, decoder.norm, decoder.rotary_emb])
    if hooked is not None:
        return hooked
    return unsupported_layers(decoder.layers[: decoder.config.num_hidden_layers], decoder.config)


class LeanLayers:
    """A stack of supported decoder layers, run on explicit rotary tables, 4-D additive mask and cache."""

    def __init__(self, layers: Sequence[Any], config: Any) -> None:
        reason = unsupported_layers(layers, config)
        if reason is not None:
            raise ValueError(f"these layers cannot run lean: {reason}")
        self.layers = [
            _Layer(layer.self_attn, layer.input_layernorm, layer.self_attn.q_proj, layer.self_attn.k_proj,
                   layer.self_attn.v_proj, layer.self_attn.o_proj, layer.post_attention_layernorm,
                   layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj, int(layer.self_attn.head_dim),
                   float(layer.self_attn.scaling))
            for layer in layers]

    @classmethod
    def build(cls, layers: Sequence[Any], config: Any) -> LeanLayers | None:
        return cls(layers, config) if unsupported_layers(layers, config) is None else None

    def __len__(self) -> int:
        return len(self.layers)

    def run(self, hidden: torch.Tensor, indices: Sequence[int], rotary: tuple[torch.Tensor, torch.Tensor],
            mask: torch.Tensor | None, cache: Any) -> torch.Tensor:
        """`hidden` [B, S, H] through the layers `indices` (ascending), as a decoder's own loop runs them;
        `rotary`: the (cos, sin) its rotary embedding gives for the positions; cache: a transformers `Cache`
        (the layer index is the one in `indices`) or None."""
        cos, sin = rotary[0].unsqueeze(1), rotary[1].unsqueeze(1)
        batch, width = hidden.shape[:2]
        for i in indices:
            layer = self.layers[i]
            shape = (batch, width, -1, layer.head_dim)
            x = rms_norm(layer.input_norm, hidden)
            q = F.linear(x, layer.q.weight, layer.q.bias).view(shape).transpose(1, 2)
            k = F.linear(x, layer.k.weight, layer.k.bias).view(shape).transpose(1, 2)
            v = F.linear(x, layer.v.weight, layer.v.bias).view(shape).transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            k = (k * cos) + (_rotate_half(k) * sin)
            if cache is not None:
                k, v = cache.update(k, v, i)
            attended, _ = sdpa_attention_forward(layer.attention, q, k, v, mask, dropout=0.0, scaling=layer.scaling)
            hidden = hidden + F.linear(attended.reshape(batch, width, -1).contiguous(), layer.o.weight, layer.o.bias)
            x = rms_norm(layer.post_norm, hidden)
            gate = F.silu(F.linear(x, layer.gate.weight, layer.gate.bias))
            gated = gate * F.linear(x, layer.up.weight, layer.up.bias)
            hidden = hidden + F.linear(gated, layer.down.weight, layer.down.bias)
        return hidden


class LeanDecoder:
    """Runs a supported HF decoder on explicit ids, positions, 4-D additive mask and cache."""

    def __init__(self, decoder: Any) -> None:
        reason = unsupported(decoder)
        if reason is not None:
            raise ValueError(f"this decoder cannot run lean: {reason}")
        self.decoder = decoder
        self.layers = LeanLayers(decoder.layers[: decoder.config.num_hidden_layers], decoder.config)

    @classmethod
    def build(cls, decoder: Any) -> LeanDecoder | None:
        return cls(decoder) if unsupported(decoder) is None else None

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                 cache: Any) -> torch.Tensor:
        """Last hidden states [B, W, H] after the final norm, as `decoder(...).last_hidden_state`."""
        hidden = F.embedding(input_ids, self.decoder.embed_tokens.weight, self.decoder.embed_tokens.padding_idx)
        hidden = self.run(hidden, range(len(self.layers)), mask, position_ids, cache)
        return rms_norm(self.decoder.norm, hidden)

    def run(self, hidden: torch.Tensor, indices: Sequence[int], mask: torch.Tensor, position_ids: torch.Tensor,
            cache: Any) -> torch.Tensor:
        """`hidden` [B, S, H] through the layers `indices` (ascending), as the decoder's own loop runs them."""
        rotary = self.decoder.rotary_emb(hidden, position_ids=position_ids)
        return self.layers.run(hidden, indices, rotary, mask, cache)

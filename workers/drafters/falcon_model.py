"""The Falcon drafter network: fused (feature, next token) pairs and learned placeholders run through a
few Llama decoder layers; the target's frozen embedding and LM head turn predicted features into tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig
from transformers.cache_utils import Cache
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding

from workers.lean_decoder import LeanLayers, rms_norm

CONFIG_FILE = "falcon_config.json"
WEIGHTS_FILE = "model.safetensors"
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class FalconConfig:
    """Shape of a Falcon drafter; `hidden_size` and `vocab_size` must equal the target's."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    num_layers: int = 2
    block_size: int = 2  # k: tokens predicted per forward (one pair + k-1 placeholders)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size",
                    "num_layers", "block_size", "max_position_embeddings"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"falcon.{key} must be a positive integer, got {value!r}")
        for key in ("rope_theta", "rms_norm_eps"):
            if not getattr(self, key) > 0:
                raise ValueError(f"falcon.{key} must be > 0, got {getattr(self, key)!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"falcon.num_heads={self.num_heads} must divide hidden_size={self.hidden_size}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"falcon.num_kv_heads={self.num_kv_heads} must divide "
                             f"num_heads={self.num_heads}")
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"falcon.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, "
                             f"got {self.attn_implementation!r}")

    @classmethod
    def from_target_config(cls, hf_config: Any, **overrides: Any) -> FalconConfig:
        """Derive a drafter config from a Llama-family target config; `overrides` replace fields."""
        rope = getattr(hf_config, "rope_parameters", None) or {}
        values: dict[str, Any] = {
            "hidden_size": hf_config.hidden_size,
            "num_heads": hf_config.num_attention_heads,
            "num_kv_heads": getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
            "intermediate_size": hf_config.intermediate_size,
            "vocab_size": hf_config.vocab_size,
            "rope_theta": float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))),
            "rms_norm_eps": float(getattr(hf_config, "rms_norm_eps", 1e-6)),
            "max_position_embeddings": getattr(hf_config, "max_position_embeddings", 4096),
        }
        return cls.from_dict({**values, **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FalconConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in known:
                raise ValueError(f"unknown falcon config key {key!r}")
        return cls(**values)

    def to_llama_config(self) -> LlamaConfig:
        """The LlamaConfig the decoder layers, norm and rotary embedding are built from."""
        llama = LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
            rms_norm_eps=self.rms_norm_eps, max_position_embeddings=self.max_position_embeddings,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
        )
        llama._attn_implementation = self.attn_implementation
        return llama


class FalconDrafterModel(nn.Module):
    """fc(cat[feature, embed(next token)]) or a placeholder -> decoder layers -> final norm = features."""

    embed_weight: torch.Tensor  # [V, H] frozen, from the target
    lm_head_weight: torch.Tensor  # [V, H] frozen, from the target

    def __init__(self, config: FalconConfig, embed_weight: torch.Tensor,
                 lm_head_weight: torch.Tensor) -> None:
        super().__init__()
        expected = (config.vocab_size, config.hidden_size)
        for name, weight in (("embed_weight", embed_weight), ("lm_head_weight", lm_head_weight)):
            if tuple(weight.shape) != expected:
                raise ValueError(f"{name} has shape {tuple(weight.shape)}, the falcon config "
                                 f"needs {expected}")
        self.config = config
        self.llama_config = config.to_llama_config()
        # frozen target tensors: non-persistent buffers, so save() and the optimizer never see them
        self.register_buffer("embed_weight", embed_weight.detach(), persistent=False)
        self.register_buffer("lm_head_weight", lm_head_weight.detach(), persistent=False)
        hidden = config.hidden_size
        self.fc = nn.Linear(2 * hidden, hidden, bias=False)
        self.placeholder = nn.Parameter(torch.randn(hidden) * 0.02)
        self.layers = nn.ModuleList(LlamaDecoderLayer(self.llama_config, i) for i in range(config.num_layers))
        self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.rotary = LlamaRotaryEmbedding(self.llama_config)
        # inference runs the layers' math without their module machinery (bitwise the same states)
        self.lean = LeanLayers.build(list(self.layers), self.llama_config)

    def fuse(self, features: torch.Tensor, next_token_ids: torch.Tensor) -> torch.Tensor:
        """Pair inputs: features [B, T, H] at t and token ids [B, T] at t+1 -> [B, T, H]."""
        embeds = nn.functional.embedding(next_token_ids, self.embed_weight)  # [B, T, H]
        fused: torch.Tensor = self.fc(torch.cat([features.to(embeds.dtype), embeds], dim=-1))
        return fused

    def placeholders(self, num: int) -> torch.Tensor:
        """[1, num, H] placeholder inputs (one learned vector; position ids tell them apart)."""
        return self.placeholder[None, None, :].expand(1, num, -1)

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor,
                cache: Cache | None = None) -> torch.Tensor:
        """inputs [B, Q, H], additive mask [B, 1, Q, K], position ids [B, Q] -> features [B, Q, H]."""
        position_embeddings = self.rotary(inputs, position_ids)
        if self.lean is not None and not torch.is_grad_enabled():
            hidden = self.lean.run(inputs, range(len(self.lean)), position_embeddings, attention_mask, cache)
            return rms_norm(self.norm, hidden)
        hidden = inputs
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=attention_mask, position_ids=position_ids,
                           past_key_values=cache, use_cache=cache is not None,
                           position_embeddings=position_embeddings)
        out: torch.Tensor = self.norm(hidden)
        return out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., V] with the target's LM head (F.linear reads [V, H] as stored: `@ W.T` copied it)."""
        return nn.functional.linear(hidden, self.lm_head_weight)

    def probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., V] next-token distributions, in fp32."""
        return torch.softmax(self.logits(hidden).float(), dim=-1)

    def place(self, device: str | torch.device, dtype: torch.dtype) -> FalconDrafterModel:
        """Move and cast; the rotary tables are rebuilt so their frequencies stay in fp32."""
        self.to(device=device, dtype=dtype)
        self.rotary = LlamaRotaryEmbedding(self.llama_config).to(device)
        return self.eval()

    def save(self, directory: str | Path) -> None:
        """Write falcon_config.json and the drafter's own weights (not the target's embed / LM head)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(self.config), indent=2) + "\n")
        weights = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(weights, path / WEIGHTS_FILE)

    @classmethod
    def load(cls, directory: str | Path, target_dir: str | Path | None = None,
             embed_weight: torch.Tensor | None = None, lm_head_weight: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> FalconDrafterModel:
        """Load a saved drafter; the embedding and LM head come from `target_dir` or the given tensors."""
        path = Path(directory)
        config = FalconConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
        if target_dir is not None:
            embed_weight, lm_head_weight = load_target_head(target_dir)
        if embed_weight is None:
            raise ValueError("FalconDrafterModel.load needs target_dir or embed_weight")
        model = cls(config, embed_weight, embed_weight if lm_head_weight is None else lm_head_weight)
        model.load_state_dict(load_file(path / WEIGHTS_FILE), strict=True)
        return model.place(device, dtype)


def load_target_head(target_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(embed_weight, lm_head_weight) [V, H] read from a HF checkpoint's safetensors, nothing else."""
    path = Path(target_dir)
    weight_files = _weight_files(path)
    embed_name = next((n for n in weight_files if n.endswith("embed_tokens.weight")), None)
    if embed_name is None:
        raise ValueError(f"no embed_tokens.weight in the safetensors files of {path}")
    embed = _read_tensor(weight_files[embed_name], embed_name)
    tied = ties_embeddings(path)
    if tied is None:  # no config.json: tied exactly when the checkpoint holds no separate head
        tied = "lm_head.weight" not in weight_files
    if tied:
        return embed, embed
    if "lm_head.weight" not in weight_files:
        raise ValueError(f"{path}: config.json says the embeddings are untied, but no safetensors file holds "
                         "lm_head.weight")
    return embed, _read_tensor(weight_files["lm_head.weight"], "lm_head.weight")


def ties_embeddings(target_dir: str | Path) -> bool | None:
    """Whether the checkpoint's LM head is its embedding, as transformers decides it: `tie_word_embeddings` from
    config.json, or when the key is absent the default of the model type's config class (False for Llama and
    Qwen2, True for e.g. Gemma). None when there is no config.json."""
    path = Path(target_dir)
    if not (path / "config.json").exists():
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))


def _weight_files(path: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (single file or sharded index)."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    single = path / WEIGHTS_FILE
    if not single.exists():
        raise FileNotFoundError(f"{path} has neither {WEIGHTS_FILE} nor model.safetensors.index.json")
    with safe_open(str(single), framework="pt") as handle:
        return {name: single for name in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)


def _read_tensor(file: Path, name: str) -> torch.Tensor:
    with safe_open(str(file), framework="pt") as handle:
        tensor: torch.Tensor = handle.get_tensor(name)
    return tensor

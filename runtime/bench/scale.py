"""Scale mode: a randomly initialised target of a realistic shape (Llama-3-8B-like on GPU, smaller
on CPU) saved once to a cache folder, random token-id prompts, and the oracle drafter's references.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
CACHE_DIR = Path.home() / ".cache" / "tandem" / "scale"


@dataclass(frozen=True)
class TargetShape:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int

    @property
    def name(self) -> str:
        return (f"llama-L{self.num_layers}-H{self.hidden_size}-A{self.num_heads}-KV{self.num_kv_heads}"
                f"-I{self.intermediate_size}-V{self.vocab_size}")


LLAMA3_8B = TargetShape(32, 4096, 32, 8, 14336, 128256)
CPU_DEFAULT = TargetShape(8, 1024, 16, 4, 3584, 32000)


def default_shape(device: str) -> TargetShape:
    return CPU_DEFAULT if device == "cpu" else LLAMA3_8B


def default_dtype(device: str) -> str:
    return "float32" if device == "cpu" else "bfloat16"


def build_target(shape: TargetShape, dtype: torch.dtype, device: str, cache_dir: Path = CACHE_DIR,
                 seed: int = 0) -> Path:
    """The checkpoint folder of a random-weight Llama of `shape` (built and saved on first use; no tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = cache_dir / f"{shape.name}-{str(dtype).removeprefix('torch.')}-seed{seed}"
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    log.info("building random-weight target %s in %s", shape.name, folder)
    config = LlamaConfig(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
                         intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_layers,
                         num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
                         max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model: Any = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    model.save_pretrained(folder)
    return folder


def random_prompts(num: int, length: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """`num` prompts of `length` token ids (ids 0..2 are special and left out)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (length,), generator=generator).tolist() for _ in range(num)]


def write_references(path: Path, prompts: list[list[int]], outputs: list[list[int]]) -> Path:
    """The oracle's references: each prompt followed by the target's greedy continuation."""
    path.write_text(json.dumps([p + o for p, o in zip(prompts, outputs, strict=True)]))
    return path


def oracle_keys(reference: Path, accept_prob: float, step_ms: float, seed: int) -> dict[str, Any]:
    return {"oracle_reference": str(reference.resolve()), "oracle_accept_prob": accept_prob,
            "oracle_step_ms": step_ms, "oracle_seed": seed}

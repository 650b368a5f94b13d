"""Causal-LM training pieces for the demo target and the AR draft model: a Llama built from a shape,
next-token or distillation loss, held-out loss, greedy samples and an fp16 HF checkpoint on disk.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from workers.training.loop import StepOutput
from workers.training.tokens import random_windows, step_generator

SAVE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class LlamaShape:
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 6
    num_kv_heads: int = 2
    intermediate_size: int = 1024
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True


def build_llama(shape: LlamaShape, tokenizer: Any, seed: int) -> LlamaForCausalLM:
    """A freshly initialised LlamaForCausalLM over the tokenizer's vocabulary (sdpa attention)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        tie_word_embeddings=shape.tie_word_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def num_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding / LM head counts once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LMBatches:
    """Where one step's windows come from: `stream` [N], windows of `seq_len` tokens, `batch_size` of them."""

    stream: torch.Tensor
    batch_size: int
    seq_len: int
    seed: int

    def __call__(self, step: int) -> torch.Tensor:
        return random_windows(self.stream, self.batch_size, self.seq_len, step_generator(self.seed, step))


def next_token_loss(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of x[t+1] given x[..t] over windows [B, S]."""
    logits = model(input_ids=windows).logits[:, :-1]  # [B, S-1, V]
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))


def distill_loss(student: nn.Module, teacher: nn.Module, windows: torch.Tensor, hard_weight: float) -> torch.Tensor:
    """Soft cross-entropy to the teacher's next-token distribution (= KL up to a constant), plus
    `hard_weight` times the plain next-token loss."""
    with torch.no_grad():
        target = torch.softmax(teacher(input_ids=windows).logits[:, :-1].float(), dim=-1)  # [B, S-1, V]
    logits = student(input_ids=windows).logits[:, :-1].float()
    log_q = torch.log_softmax(logits, dim=-1)
    soft = -(target * log_q).sum(-1).mean()
    if hard_weight == 0:
        return soft
    hard = nn.functional.nll_loss(log_q.reshape(-1, log_q.shape[-1]), windows[:, 1:].reshape(-1))
    return soft + hard_weight * hard


def make_step_fn(model: nn.Module, batches: LMBatches, teacher: nn.Module | None,
                 hard_weight: float) -> Any:
    """The loop's `step_fn`: one batch's loss (plain LM, or distillation when a teacher is given)."""
    def step_fn(step: int) -> StepOutput:
        windows = batches(step)
        if teacher is None:
            loss = next_token_loss(model, windows)
        else:
            loss = distill_loss(model, teacher, windows, hard_weight)
        return StepOutput(loss, windows.numel())
    return step_fn


@torch.no_grad()
def held_out_loss(model: nn.Module, windows: torch.Tensor, batch_size: int = 16) -> dict[str, float]:
    """Mean next-token cross-entropy (nats) and perplexity over held-out windows [W, S]."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):  # a few batches
        chunk = windows[start:start + batch_size]
        total += float(next_token_loss(model, chunk)) * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    model.train(was_training)
    loss = total / count
    return {"loss": loss, "ppl": math.exp(loss)}


@torch.no_grad()
def greedy_completion(model: Any, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=model.config.pad_token_id)
    return [int(t) for t in out[0, len(prompt_ids):]]


def save_hf(model: LlamaForCausalLM, tokenizer: Any, out_dir: str | Path, dtype: str = "float16") -> None:
    """A normal HF checkpoint (safetensors, config, generation config, tokenizer) stored in `dtype`."""
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save dtype must be one of {sorted(SAVE_DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored: Any = copy.deepcopy(model)
    stored.to(SAVE_DTYPES[dtype]).eval()
    generation_config: Any = GenerationConfig  # untyped in transformers' stubs
    stored.generation_config = generation_config(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False)
    stored.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))

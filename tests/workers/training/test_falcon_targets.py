"""Falcon training on a Qwen2-family target, on chat data with the loss on assistant replies only, and in
bf16 mixed precision, through the same falcon_trainer calls scripts/train_drafter.py makes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from tests.models import ARCHS, tiny_model
from tests.workers.training.test_chat import CHAT, TEMPLATE, TOKENIZER
from tests.workers.training.test_falcon_training import markov_stream
from workers.drafters.falcon import FalconDrafter
from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel
from workers.training.corpus import read_corpus
from workers.training.csgd import CSGDConfig, Targets, build_layout
from workers.training.dataset import build_stream
from workers.training.falcon_trainer import (
    FalconBatches,
    build_drafter,
    held_out_metrics,
    load_frozen_target,
    make_step_fn,
    save_drafter,
)
from workers.training.loop import LoopHooks, OptimConfig, StepOutput, TrainState, make_optimizer, train
from workers.training.precision import Precision

VOCAB, SEQ_LEN = 96, 24


def save_qwen2(path: Path, vocab_size: int = VOCAB, tie: bool = False) -> Path:
    tiny_model("qwen2", seed=0, vocab_size=vocab_size, tie_word_embeddings=tie).save_pretrained(str(path))
    return path


def train_steps(model: FalconDrafterModel, step_fn: Callable[[int], StepOutput], steps: int) -> list[float]:
    """Train for `steps` and return every step's loss."""
    losses: list[float] = []

    def recording(step: int) -> StepOutput:
        out = step_fn(step)
        losses.append(float(out.loss.detach()))
        return out

    config = OptimConfig(num_steps=steps, lr=3e-3, warmup_steps=2, weight_decay=0.0)
    train(model, make_optimizer(model, config), recording, config, TrainState(), LoopHooks(log_every=steps))
    return losses


@pytest.mark.parametrize("tie", [False, True])
def test_qwen2_head_is_the_targets(tmp_path: Path, tie: bool) -> None:
    target = load_frozen_target(save_qwen2(tmp_path / "qwen2", tie=tie))
    model = build_drafter(tmp_path / "qwen2", target.config, num_layers=1, block_size=2, seed=0)
    assert target.config.model_type == "qwen2" and target.model.layers[0].self_attn.q_proj.bias is not None
    assert torch.equal(model.embed_weight, target.model.embed_tokens.weight)
    assert torch.equal(model.lm_head_weight, target.lm_head.weight)
    assert (model.lm_head_weight.data_ptr() == model.embed_weight.data_ptr()) == tie  # a tied head is one tensor
    assert (model.config.hidden_size, model.config.num_kv_heads) == (64, 2)
    assert model.config.rope_theta == target.config.rope_parameters["rope_theta"]


def test_qwen2_target_loss_falls_and_saved_drafter_reloads(tmp_path: Path) -> None:
    target_dir = save_qwen2(tmp_path / "qwen2")
    target = load_frozen_target(target_dir)
    model = build_drafter(target_dir, target.config, num_layers=1, block_size=2, seed=0)
    step_fn = make_step_fn(model, target, FalconBatches(markov_stream(), 4, SEQ_LEN, 0), CSGDConfig())
    losses = train_steps(model, step_fn, 40)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.9 * first, losses
    save_drafter(model, tmp_path / "falcon", "float32")
    loaded = FalconDrafter.from_pretrained(tmp_path / "falcon", target_dir).model
    held = markov_stream(seed=1)[: 4 * SEQ_LEN].view(4, SEQ_LEN)
    assert held_out_metrics(loaded, target, held, CSGDConfig()) == held_out_metrics(model, target, held, CSGDConfig())


def chat_corpus(path: Path, num: int = 40) -> Path:
    """Arithmetic conversations: a system turn, then user / assistant pairs."""
    lines = []
    for i in range(num):
        a, b = i % 7, i % 5
        messages = [{"role": r, "content": c} for r, c in CHAT[:1]]
        messages += [{"role": "user", "content": f"What is {a} plus {b}?"},
                     {"role": "assistant", "content": f"{a} plus {b} is {a + b}."},
                     {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You are welcome."}]
        lines.append(json.dumps({"messages": messages}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_chat_training_weights_only_positions_before_assistant_tokens(tmp_path: Path) -> None:
    tokenizer: Any = AutoTokenizer.from_pretrained(str(TOKENIZER))
    tokenizer.chat_template = TEMPLATE
    stream = build_stream(tokenizer, read_corpus(str(chat_corpus(tmp_path / "chat.jsonl")), "train"))
    assert stream.is_masked
    target_dir = save_qwen2(tmp_path / "qwen2", vocab_size=len(tokenizer))
    target = load_frozen_target(target_dir)
    seq_len = 48
    batches = FalconBatches(stream.ids, 4, seq_len, 0, stream.position_weights)
    windows, weights = batches(0)
    _, is_target = FalconBatches(stream.ids, 4, seq_len, 0, stream.is_target)(0)  # same windows
    assert weights is not None and is_target is not None
    layout = build_layout(seq_len - 1, 2)
    counted = Targets.of(target, windows, weights).per_row(layout).row_weights(layout)  # [B, Q]
    predicted = layout.positions + 2  # row r's logits predict the token at positions[r] + 2
    inside = layout.valid & (predicted < seq_len)
    expected = is_target[:, predicted.clamp(max=seq_len - 1)] & inside[None, :]
    assert torch.equal(counted[:, inside], expected[:, inside])  # trained rows = rows predicting reply tokens
    assert expected[:, inside].any() and not expected[:, inside].all()  # user / header rows get weight 0
    model = build_drafter(target_dir, target.config, num_layers=1, block_size=2, seed=0)
    losses = train_steps(model, make_step_fn(model, target, batches, CSGDConfig()), 3)
    assert all(torch.isfinite(torch.tensor(losses)))
    held = held_out_metrics(model, target, windows, CSGDConfig(), weights=weights)
    assert set(held) == {"loss", "feature_loss", "distill_loss", "acc_d1", "acc_d2"}
    assert held_out_metrics(model, target, windows, CSGDConfig(), weights=torch.zeros_like(weights)) == {}


def test_bf16_mixed_precision_keeps_fp32_master_weights(tmp_path: Path) -> None:
    precision = Precision("cpu", "bfloat16")
    target_dir = save_qwen2(tmp_path / "qwen2")
    target = load_frozen_target(target_dir, precision)
    model = build_drafter(target_dir, target.config, num_layers=1, block_size=2, seed=0, precision=precision)
    assert target.lm_head.weight.dtype == torch.bfloat16 and model.lm_head_weight.dtype == torch.bfloat16
    before = model.fc.weight.detach().clone()
    losses = train_steps(model, make_step_fn(model, target, FalconBatches(markov_stream(), 2, SEQ_LEN, 0),
                                             CSGDConfig(), precision), 2)
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not torch.equal(model.fc.weight, before)
    assert all(torch.isfinite(torch.tensor(losses)))
    with pytest.raises(ValueError, match="dtype"):
        Precision("cpu", "int8")
    with pytest.raises(ValueError, match="device"):
        Precision("tpu", "float32")


@pytest.mark.parametrize(("arch", "rope"), [
    ("qwen2", {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
    ("llama", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192})])
def test_published_config_json_format_gives_the_drafter_shape(arch: str, rope: dict[str, Any]) -> None:
    """config.json as Qwen2.5 / Llama-3.1 ship it (legacy rope_theta + rope_scaling keys): the drafter takes
    the target's theta and shape and plain rope."""
    config_cls, _ = ARCHS[arch]
    config = config_cls.from_dict({"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                                   "num_key_value_heads": 2, "vocab_size": 96, "rope_theta": 1e6,
                                   "rope_scaling": rope, "max_position_embeddings": 131072,
                                   "tie_word_embeddings": False})
    falcon = FalconConfig.from_target_config(config, num_layers=2)
    assert (falcon.rope_theta, falcon.num_kv_heads, falcon.vocab_size) == (1e6, 2, 96)
    rope_parameters = falcon.to_llama_config().rope_parameters
    assert rope_parameters is not None and rope_parameters["rope_type"] == "default"

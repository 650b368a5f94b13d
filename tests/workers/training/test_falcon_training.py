"""A short CSGD run on a tiny random Llama target: the loss falls, checkpoints resume, saved drafters load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workers.drafters.falcon import FalconDrafter
from workers.drafters.falcon_model import FalconDrafterModel
from workers.training.csgd import CSGDConfig
from workers.training.falcon_trainer import (
    FalconBatches,
    build_drafter,
    held_out_metrics,
    init_from,
    load_frozen_target,
    make_step_fn,
    save_drafter,
)
from workers.training.loop import LoopHooks, OptimConfig, TrainState, load_checkpoint, make_optimizer, train

VOCAB, SEQ_LEN = 96, 24


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, initializer_range=0.2,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("target")
    LlamaForCausalLM(config).save_pretrained(str(path))
    return path


def markov_stream(length: int = 4000, seed: int = 0) -> torch.Tensor:
    """Tokens from a peaked random Markov chain, so the data has structure to learn."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.softmax(torch.randn(VOCAB, VOCAB, generator=gen) * 4, dim=-1)
    ids = [0]
    for _ in range(length - 1):
        ids.append(int(torch.multinomial(table[ids[-1]], 1, generator=gen)))
    return torch.tensor(ids)


def run(target_dir: Path, steps: int, ckpt: Path, state: TrainState | None = None,
        model: FalconDrafterModel | None = None) -> tuple[FalconDrafterModel, Any, TrainState]:
    target = load_frozen_target(target_dir)
    model = model or build_drafter(target_dir, target.config, num_layers=1, block_size=2, seed=0)
    config = OptimConfig(num_steps=steps, lr=3e-3, warmup_steps=2, weight_decay=0.0)
    optimizer = make_optimizer(model, config)
    if state is not None:
        state = load_checkpoint(ckpt, model, optimizer, {"test": 1})
    step_fn = make_step_fn(model, target, FalconBatches(markov_stream(), 4, SEQ_LEN, 0), CSGDConfig())
    hooks = LoopHooks(checkpoint=ckpt, checkpoint_every=5, log_every=5, meta={"test": 1})
    return model, target, train(model, optimizer, step_fn, config, state or TrainState(), hooks)


def test_short_csgd_run_reduces_held_out_loss_and_resumes(target_dir: Path, tmp_path: Path) -> None:
    held = markov_stream(seed=1)[: 4 * SEQ_LEN].view(4, SEQ_LEN)
    target = load_frozen_target(target_dir)
    fresh = build_drafter(target_dir, target.config, num_layers=1, block_size=2, seed=0)
    before = held_out_metrics(fresh, target, held, CSGDConfig())
    ckpt = tmp_path / "ckpt.pt"
    model, _, state = run(target_dir, 40, ckpt)
    after = held_out_metrics(model, target, held, CSGDConfig())
    assert state.step == 40 and state.tokens_seen == 40 * 4 * SEQ_LEN
    assert after["loss"] < 0.93 * before["loss"]
    assert after["acc_d1"] > before["acc_d1"]
    # resume: a fresh model picks up the saved weights and step, and trains on to the new step count
    _resumed, _, state2 = run(target_dir, 42, ckpt, state=TrainState(),
                             model=build_drafter(target_dir, target.config, 1, 2, seed=5))
    assert state2.step == 42 and state2.history[0] == state.history[0]


@pytest.mark.parametrize(("dtype", "atol"), [("float32", 1e-6), ("float16", 2e-2)])
def test_saved_drafter_loads_through_falcon_drafter(target_dir: Path, tmp_path: Path, dtype: str,
                                                     atol: float) -> None:
    target = load_frozen_target(target_dir)
    model = build_drafter(target_dir, target.config, num_layers=1, block_size=2, seed=3).eval()
    save_drafter(model, tmp_path / "falcon", dtype)
    loaded = FalconDrafter.from_pretrained(tmp_path / "falcon", target_dir).model
    assert next(loaded.parameters()).dtype == torch.float32
    inputs = torch.randn(1, 5, 32)
    mask = torch.zeros(1, 1, 5, 5)
    positions = torch.arange(5)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs, mask, positions), model(inputs, mask, positions),
                                   atol=atol, rtol=0)


def test_a_deeper_drafter_starts_from_a_saved_one_computing_the_same(target_dir: Path, tmp_path: Path) -> None:
    """`--init` with more layers: the saved layers come first, each new layer adds nothing until trained; any
    other difference is refused."""
    target = load_frozen_target(target_dir)
    saved = build_drafter(target_dir, target.config, num_layers=1, block_size=2, seed=3).eval()
    save_drafter(saved, tmp_path / "falcon", "float32")
    deeper = build_drafter(target_dir, target.config, num_layers=2, block_size=2, seed=4).eval()
    init_from(deeper, tmp_path / "falcon")
    inputs, mask, positions = torch.randn(1, 5, 32), torch.zeros(1, 1, 5, 5), torch.arange(5)[None]
    with torch.no_grad():
        torch.testing.assert_close(deeper(inputs, mask, positions), saved(inputs, mask, positions), atol=1e-6, rtol=0)
        new_layer: Any = deeper.layers[1]
        assert new_layer.mlp.up_proj.weight.abs().sum() > 0  # the new layer itself is not zero
    wider = build_drafter(target_dir, target.config, num_layers=1, block_size=3, seed=4)
    with pytest.raises(ValueError, match="differs"):
        init_from(wider, tmp_path / "falcon")
    shallower_dir = tmp_path / "deep"
    save_drafter(deeper, shallower_dir, "float32")
    with pytest.raises(ValueError, match="differs"):  # fewer layers than saved: refused
        init_from(build_drafter(target_dir, target.config, num_layers=1, block_size=2, seed=4), shallower_dir)

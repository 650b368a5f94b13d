"""CSGD: the training layout matches the inference path, glancing replaces exactly the counted slots."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workers.drafters.falcon import FalconDrafter
from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel
from workers.training.csgd import (
    CSGDConfig,
    Targets,
    build_layout,
    choose_glanced,
    count_mistakes,
    csgd_loss,
    layout_inputs,
    pair_inputs,
    run_layout,
)
from workers.tree_policy import TreeConfig

VOCAB, HIDDEN, LENGTH = 120, 64, 14


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=128, initializer_range=0.2)
    model = LlamaForCausalLM(config)
    model.train(False)  # = eval(), which transformers leaves unannotated
    return model


def drafter_model(target: LlamaForCausalLM, block_size: int) -> FalconDrafterModel:
    torch.manual_seed(1)
    config = FalconConfig.from_target_config(target.config, block_size=block_size)
    model = FalconDrafterModel(config, target.model.embed_tokens.weight, target.lm_head.weight)
    return model.place("cpu", torch.float32)


def token_ids(seed: int = 3, batch: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, LENGTH))


def test_layout_rows_and_visibility() -> None:
    layout = build_layout(num_pairs=4, block_size=3)
    assert layout.positions.tolist() == [0, 1, 2, 3, 1, 2, 2, 3, 3, 4, 4, 5]
    assert layout.depths.tolist() == [1, 1, 1, 1, 2, 3, 2, 3, 2, 3, 2, 3]
    assert layout.valid.tolist() == [True] * 4 + [True, True, True, True, True, False, False, False]
    # placeholder 1 of block 1 (row 6) sees pairs 0..1 and its own block's two placeholders only
    assert torch.nonzero(layout.visible[6]).flatten().tolist() == [0, 1, 6, 7]
    assert torch.equal(layout.visible[:4, :4], torch.ones(4, 4, dtype=torch.bool).tril())


@pytest.mark.parametrize("block_size", [2, 3])
def test_training_forward_equals_inference_path(target: LlamaForCausalLM, block_size: int) -> None:
    """Every row of the training layout equals what a FalconSession computes for the same prefix."""
    model = drafter_model(target, block_size)
    ids = token_ids()
    targets = Targets.of(target, ids)
    layout = build_layout(LENGTH - 1, block_size)
    with torch.no_grad():
        hidden = run_layout(model, layout_inputs(model, pair_inputs(model, targets.features, ids), layout, None),
                            layout)[0]  # [Q, H]
    drafter = FalconDrafter(model)
    tree = TreeConfig(total_tokens=block_size, depth=block_size, top_k=1)
    for t in (0, 5, LENGTH - 2):  # root pair at position t: committed x[0..t+1], features f[0..t]
        session = drafter.open(ids[0, : t + 2].tolist(), tree, targets.features[0, : t + 1])
        assert session.grow()
        rows = [t] + [LENGTH - 1 + t * (block_size - 1) + j for j in range(block_size - 1)]
        torch.testing.assert_close(session.node_features, hidden[rows], atol=1e-5, rtol=1e-5)


def test_glanced_placeholder_equals_next_pair(target: LlamaForCausalLM) -> None:
    """k=2: a placeholder given the true pair input of its position computes exactly that pair's row."""
    model = drafter_model(target, 2)
    ids = token_ids()
    targets = Targets.of(target, ids)
    layout = build_layout(LENGTH - 1, 2)
    glanced = torch.zeros(1, LENGTH - 1, dtype=torch.bool)
    glanced[0, [2, 7]] = True  # blocks 2 and 7 -> positions 3 and 8
    with torch.no_grad():
        pairs = pair_inputs(model, targets.features, ids)
        hidden = run_layout(model, layout_inputs(model, pairs, layout, glanced), layout)[0]
    torch.testing.assert_close(hidden[LENGTH - 1 + 2], hidden[3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[LENGTH - 1 + 7], hidden[8], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block_size", [2, 3])
def test_glancing_replaces_exactly_the_counted_slots(target: LlamaForCausalLM, block_size: int) -> None:
    layout = build_layout(LENGTH - 1, block_size)
    valid_slots = layout.valid[layout.num_pairs:]
    counts = torch.tensor([0, 3, 7, 10_000])
    glanced = choose_glanced(counts, layout, torch.Generator().manual_seed(0))
    assert glanced.sum(dim=1).tolist() == [0, 3, 7, int(valid_slots.sum())]
    assert not bool((glanced & ~valid_slots).any())
    eligible = torch.arange(valid_slots.numel())[None, :].expand(4, -1) % 2 == 0  # e.g. trained positions only
    some = choose_glanced(counts, layout, torch.Generator().manual_seed(0), eligible)
    num_eligible = int((valid_slots & eligible[0]).sum())
    assert some.sum(dim=1).tolist() == [min(c, num_eligible) for c in (0, 3, 7, 10_000)]
    assert not bool((some & ~eligible).any())
    model = drafter_model(target, block_size)
    ids = token_ids(batch=4)
    with torch.no_grad():
        pairs = pair_inputs(model, Targets.of(target, ids).features, ids)  # [4, T, H]
        inputs = layout_inputs(model, pairs, layout, glanced)[:, layout.num_pairs:]  # [4, S, H]
    replaced = ~torch.isclose(inputs, model.placeholder.expand_as(inputs)).all(dim=-1)
    assert torch.equal(replaced, glanced)
    b, s = torch.nonzero(glanced)[0].tolist()
    torch.testing.assert_close(inputs[b, s], pairs[b, int(layout.positions[layout.num_pairs + s])])


def test_mistake_count_and_glance_count_in_a_step(target: LlamaForCausalLM) -> None:
    model = drafter_model(target, 2)
    ids = token_ids(batch=2)
    targets = Targets.of(target, ids)
    layout = build_layout(LENGTH - 1, 2)
    with torch.no_grad():
        first = model.logits(run_layout(model, layout_inputs(model, pair_inputs(model, targets.features, ids),
                                                                layout, None), layout)).argmax(-1)
    mistakes = count_mistakes(first, targets.per_row(layout).argmax, layout.valid)
    out = csgd_loss(model, ids, targets, layout, CSGDConfig(glance_ratio=0.5), torch.Generator().manual_seed(0))
    expected = torch.round(mistakes.float() * 0.5).long().clamp(max=int(layout.valid[layout.num_pairs:].sum()))
    assert out.num_glanced == int(expected.sum()) > 0
    assert len(out.accuracy_per_depth) == 2 and out.loss.requires_grad


def test_positions_without_weight_add_no_loss(target: LlamaForCausalLM) -> None:
    """Rows whose target position is not trained on (e.g. before a user-turn token) add nothing to the loss."""
    model = drafter_model(target, 2)
    ids = token_ids(batch=2)
    layout = build_layout(LENGTH - 1, 2)
    plain = CSGDConfig(is_glancing=False)
    weights = torch.rand(2, LENGTH, generator=torch.Generator().manual_seed(0)) < 0.5
    targets = Targets.of(target, ids, weights)

    def loss_with(probs: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        t = Targets(targets.features, probs, targets.argmax, w)
        return csgd_loss(model, ids, t, layout, plain, torch.Generator()).loss

    base = loss_with(targets.probs, weights)
    uniform = torch.full_like(targets.probs, 1.0 / VOCAB)
    off = torch.where(weights[..., None], targets.probs, uniform)  # changed only where not trained on
    on = torch.where(weights[..., None], uniform, targets.probs)  # changed only where trained on
    assert torch.equal(loss_with(off, weights), base)
    assert not torch.allclose(loss_with(on, weights), base)
    assert torch.equal(loss_with(targets.probs, torch.ones_like(weights)), loss_with(targets.probs, None))
    nothing = loss_with(targets.probs, torch.zeros_like(weights))
    torch.autograd.backward(nothing)
    assert float(nothing.detach()) == 0.0
    assert model.fc.weight.grad is not None and not model.fc.weight.grad.any()

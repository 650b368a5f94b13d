"""Sequence-level unlikelihood fine-tuning: the repeated-n-gram mask, the loss, the greedy rollout and
the `scripts/train_target.py --init --unlikelihood` run that made the shipped demo target."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tests.models import hf_greedy, tiny_model
from workers.training.corpus import is_held_out
from workers.training.unlikelihood import (
    UnlikelihoodConfig,
    greedy_continue,
    repeated_ngram_mask,
    unlikelihood_loss,
)

ROOT = Path(__file__).resolve().parents[3]


def test_mask_marks_every_token_of_a_repeated_ngram() -> None:
    rows = torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3, 4, 9]])
    assert repeated_ngram_mask(rows, 4).tolist() == [[False] * 5 + [True] * 4 + [False]]


def test_mask_is_empty_without_repeats_and_catches_short_loops() -> None:
    assert not repeated_ngram_mask(torch.arange(12)[None], 4).any()
    # "value, value, value": period 2, every 4-gram from the second occurrence on repeats
    loop = torch.tensor([[7, 8, 7, 8, 7, 8, 7]])
    assert repeated_ngram_mask(loop, 4).tolist() == [[False, False, True, True, True, True, True]]


def test_mask_counts_the_prefix_as_history_but_never_marks_it() -> None:
    rows = torch.tensor([[1, 2, 3, 1, 2, 3, 6], [1, 2, 3, 4, 5, 6, 7]])
    mask = repeated_ngram_mask(rows, 3, start=4)
    assert mask.tolist() == [[False] * 4 + [True, True, False], [False] * 7]
    assert repeated_ngram_mask(rows, 3, start=0)[0].tolist() == [False] * 3 + [True] * 3 + [False]


def test_mask_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        repeated_ngram_mask(torch.arange(5), 2)
    with pytest.raises(ValueError, match="n must be"):
        repeated_ngram_mask(torch.arange(5)[None], 0)


def test_loss_is_minus_log_one_minus_p_at_masked_positions() -> None:
    logits = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([[0, 3, 5, 1]])
    mask = torch.tensor([[False, True, False, True]])
    probs = torch.softmax(logits, -1)
    expected = -(math.log(1 - float(probs[0, 0, 3])) + math.log(1 - float(probs[0, 2, 1]))) / 2
    assert float(unlikelihood_loss(logits, tokens, mask)) == pytest.approx(expected, rel=1e-5)


def test_loss_without_masked_positions_is_zero_and_differentiable() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    loss = unlikelihood_loss(logits, torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 5, dtype=torch.bool))
    torch.autograd.backward(loss)
    assert float(loss.detach()) == 0.0 and logits.grad is not None


def test_greedy_continue_matches_transformers_generate() -> None:
    model = tiny_model(seed=3, eos_token_id=None)
    prefixes = torch.tensor([[5, 9, 11, 4], [17, 3, 3, 60]])
    rows = greedy_continue(model, prefixes, 12)
    assert rows.shape == (2, 16)
    for prefix, row in zip(prefixes.tolist(), rows.tolist(), strict=True):
        assert row[:4] == prefix
        assert row[4:] == hf_greedy(model, prefix, 12)


def test_a_step_on_the_loss_lowers_the_probability_of_repeated_tokens() -> None:
    model = tiny_model(seed=1, eos_token_id=None).train()
    rows = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8]])
    mask = repeated_ngram_mask(rows, 4, start=4)
    before = unlikelihood_loss(model(input_ids=rows).logits, rows, mask)
    torch.autograd.backward(before)
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
    after = unlikelihood_loss(model(input_ids=rows).logits, rows, mask)
    assert float(after) < float(before)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="num_new"):
        UnlikelihoodConfig(num_new=0)
    with pytest.raises(ValueError, match="weight"):
        UnlikelihoodConfig(weight=-1)


def test_train_target_fine_tunes_an_hf_checkpoint_with_unlikelihood(tmp_path: Path) -> None:
    """The exact script path of the shipped target's last stage, on a tiny model and corpus."""
    tokenizer = AutoTokenizer.from_pretrained(str(ROOT / "models/demo/tokenizer"))
    init = tmp_path / "init"
    tiny_model(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id).save_pretrained(str(init))
    (init / "training_report.json").write_text(json.dumps({"tokens_seen": 5000, "steps": 7, "held_out_loss": 4.0}))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    names = [f"mod{i}.py" for i in range(40)]
    held = [n for n in names if is_held_out(n)]
    assert held, "the fixture needs one held-out document"
    for i, name in enumerate(names):
        body = "".join(f"def f{i}_{j}(x):\n    return x + {j}\n\n" for j in range(30))
        (corpus / name).write_text(body)
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        train_target = importlib.import_module("train_target")
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    out = tmp_path / "out"
    train_target.main(["--corpus", str(corpus), "--tokenizer", str(ROOT / "models/demo/tokenizer"),
                       "--init", str(init), "--out", str(out), "--unlikelihood", "1.0", "--ul-prefix", "16",
                       "--ul-new", "24", "--ul-batch", "2", "--seq-len", "32", "--batch-size", "2",
                       "--steps", "3", "--warmup-steps", "1", "--eval-every", "3", "--eval-windows", "2",
                       "--eval-prompts", "2", "--num-samples", "1", "--sample-tokens", "4",
                       "--checkpoint", str(tmp_path / "ckpt.pt"), "--num-threads", "1", "--log-every", "1"])
    report = json.loads((out / "training_report.json").read_text())
    steps = [h for h in report["history"] if "ul" in h]
    assert len(steps) == 3 and all(0.0 <= h["repeated"] <= 1.0 for h in steps)
    assert all(h["loss"] == pytest.approx(h["mle"] + h["ul"], rel=1e-4) for h in steps)
    final = [h for h in report["history"] if "eval_distinct4" in h]
    assert final and 0.0 < final[-1]["eval_distinct4"] <= 1.0
    # 3 steps x (2 windows x 32 + 2 rows x (16 + 24)) tokens
    assert report["tokens_seen"] == 3 * (2 * 32 + 2 * 40)
    # the report keeps the pre-training behind the starting checkpoint
    assert report["init"]["steps"] == 7 and report["tokens_seen_total"] == 5000 + report["tokens_seen"]
    assert (out / "model.safetensors").exists()

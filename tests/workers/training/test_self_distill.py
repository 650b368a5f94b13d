"""Self-distillation data: prompts from training files at line boundaries, left-padded batched continuations
equal to unpadded greedy, resumable JSONL output, and token-id records as a training stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tests.models import hf_greedy, tiny_model
from workers.training.corpus import is_held_out, read_corpus
from workers.training.dataset import build_stream, document_ids
from workers.training.falcon_trainer import FalconBatches, MixedBatches
from workers.training.self_distill import (
    GenerationSpec,
    Prompt,
    PromptSpec,
    batches,
    continue_batch,
    cut_prompts,
    done_batches,
    generate_records,
    merge_shards,
    summarize,
)

TOKENIZER = Path(__file__).resolve().parents[3] / "models" / "demo" / "tokenizer"
EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def test_prompts_are_whole_lines_of_training_files_within_the_lengths(tokenizer: object) -> None:
    spec = PromptSpec(min_tokens=32, max_tokens=64, short_share=0.5, short_min_tokens=8)
    prompts = cut_prompts(tokenizer, ["stdlib"], 24, spec, seed=3)
    assert len(prompts) == 24 and not any(is_held_out(p.name) for p in prompts)
    assert all(8 <= len(p.ids) <= 64 for p in prompts)
    assert any(len(p.ids) < 32 for p in prompts) and any(len(p.ids) >= 32 for p in prompts)
    texts = [tokenizer.decode(list(p.ids)) for p in prompts]  # type: ignore[attr-defined]
    assert sum(t.endswith("\n") for t in texts) >= 22  # whole lines (a file's last line may lack "\n")
    assert prompts == cut_prompts(tokenizer, ["stdlib"], 24, spec, seed=3)


def test_left_padded_batch_continues_like_unpadded_greedy() -> None:
    model = tiny_model(vocab_size=96)
    prompts = [[5, 9, 14], [7, 3, 30, 31, 40, 41, 50], [60]]
    rows = continue_batch(model, prompts, 12, PAD, EOS)
    for prompt, row in zip(prompts, rows, strict=True):
        expected = hf_greedy(model, prompt, 12)
        assert row == (expected[:expected.index(EOS) + 1] if EOS in expected else expected)


def test_sampled_batches_are_spread_at_the_share() -> None:
    spec = GenerationSpec(sampled_share=0.25)
    flags = [spec.is_sampled(b) for b in range(100)]
    assert sum(flags) == 25 and not any(flags[:3]) and flags[3]
    with pytest.raises(ValueError, match="sampled_share"):
        GenerationSpec(sampled_share=1.5)


def test_records_resume_and_load_as_a_masked_stream(tmp_path: Path, tokenizer: object) -> None:
    model = tiny_model(vocab_size=4096)
    prompts = [Prompt(f"pkg/m{i}.py", "stdlib", tuple(range(10 + i, 20 + 2 * i))) for i in range(6)]
    batch_list = batches(prompts, 2)
    assert [len(p.ids) for b in batch_list for p in b] == sorted(len(p.ids) for p in prompts)
    out = tmp_path / "gen.jsonl"
    spec = GenerationSpec(max_new_tokens=8, batch_size=2, sampled_share=0.5)
    with out.open("w") as handle:
        for records in generate_records(model, batch_list, spec, PAD, EOS, 0, [0, 2]):
            handle.write("".join(json.dumps(r) + "\n" for r in records))
    assert done_batches(out) == {0, 2}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["ids"][:r["prompt_len"]] == list(batch_list[r["batch"]][0].ids) or
               r["ids"][:r["prompt_len"]] == list(batch_list[r["batch"]][1].ids) for r in records)
    assert summarize(out)["records"] == len(records) == 4
    docs = read_corpus(str(out), "train") + read_corpus(str(out), "held_out")
    assert len(docs) == 4 and all(d.is_ids for d in docs)
    stream = build_stream(tokenizer, docs)
    first, first_ids = docs[0], docs[0].ids
    assert first_ids is not None and document_ids(tokenizer, docs)[0] == list(first_ids)
    n, p = len(first_ids), first.num_prompt_ids
    targets = stream.is_target[:n + 1].tolist()
    assert targets[:p] == [False] * p and all(targets[p:n])
    if first_ids[-1] != EOS:  # a separator EOS is appended and is not a target
        assert stream.ids[n] == EOS and targets[n] is False


def test_id_records_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"ids": [5, 6, 7], "prompt_len": 3}) + "\n")
    with pytest.raises(ValueError, match="prompt_len"):
        read_corpus(str(path), "all")
    path.write_text(json.dumps({"ids": [5, "x"]}) + "\n")
    with pytest.raises(ValueError, match="'ids'"):
        read_corpus(str(path), "all")


def test_mixed_batches_take_their_share_from_each_stream() -> None:
    plain = FalconBatches(torch.arange(1000), 3, 16, 0)
    masked = FalconBatches(torch.arange(5000, 6000), 1, 16, 1, torch.arange(1000) % 2 == 0)
    windows, weights = MixedBatches((plain, masked))(7)
    assert windows.shape == (4, 16) and weights is not None
    assert bool((windows[:3] < 1000).all()) and bool((windows[3] >= 5000).all())
    assert bool(weights[:3].all()) and 0 < int(weights[3].sum()) < 16
    assert torch.equal(MixedBatches((plain, masked))(7)[0], windows)


def test_merged_shards_are_ordered_by_batch(tmp_path: Path) -> None:
    rows = {0: [4, 0, 2], 1: [3, 1]}
    for shard, order in rows.items():
        (tmp_path / f"s{shard}.jsonl").write_text("".join(
            json.dumps({"ids": [5, 6], "prompt_len": 1, "batch": b, "n": i}) + "\n" for i, b in enumerate(order)))
    out = tmp_path / "merged.jsonl"
    assert merge_shards([tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"], out) == 5
    assert [json.loads(line)["batch"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]

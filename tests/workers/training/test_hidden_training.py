"""scripts/train_hidden.py end to end on tiny Llama and Qwen2 targets (plain text and chat data): the maps
are saved, load with their layer and k, and the loss falls; an interrupted run resumed from its checkpoint
ends with the very maps of an uninterrupted one."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from tests.models import tiny_model
from tests.workers.training.test_chat import TEMPLATE, TOKENIZER
from tests.workers.training.test_falcon_targets import chat_corpus
from workers.hidden_transfer import TransferMaps
from workers.training.corpus import is_held_out

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"


def script() -> Any:
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("train_hidden")


def save_target(path: Path, arch: str) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER))
    tiny_model(arch, seed=0, vocab_size=len(tokenizer), num_layers=3).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


def text_corpus(path: Path) -> Path:
    """Files of repetitive code-like text, at least two of them held out by the corpus rule."""
    path.mkdir()
    num_held = num_train = 0
    for i in range(400):
        name = f"mod_{i}.py"
        held = is_held_out(name)
        if (held and num_held >= 2) or (not held and num_train >= 8):
            continue
        num_held, num_train = num_held + held, num_train + (not held)
        (path / name).write_text("".join(f"def f{j}(x):\n    return x + {j % 5}\n\n" for j in range(i % 7, 40)))
        if num_held >= 2 and num_train >= 8:
            return path
    raise AssertionError("not enough held-out names")


def flags(target: Path, corpus: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--target", str(target), "--corpus", str(corpus), "--out", str(out), "--layer", "1",
            "--num-offsets", "2", "--num-samples", "8", "--eval-samples", "4", "--prompt-tokens", "16",
            "--new-tokens", "24", "--gen-batch-size", "8", "--batch-size", "4", "--steps", str(steps),
            "--lr", "1e-2", "--warmup-steps", "2", "--eval-every", "0", "--log-every", "5",
            "--checkpoint", str(out.parent / f"{out.name}.pt"), "--checkpoint-every", "3", "--num-threads", "1",
            *extra]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_script_trains_saves_and_loads(tmp_path: Path, arch: str) -> None:
    target = save_target(tmp_path / "target", arch)
    out = tmp_path / "hidden"
    script().main(flags(target, text_corpus(tmp_path / "corpus"), out, 30))
    maps = TransferMaps.load(out)
    assert (maps.config.layer, maps.config.num_offsets, maps.config.num_layers) == (1, 2, 3)
    report = json.loads((out / "training_report.json").read_text())
    assert {"agree_o0", "agree_o1", "chain_o0", "chain_o1", "loss"} <= set(report["held_out"])
    losses = [h["loss"] for h in report["history"] if "loss" in h]
    assert losses[-1] < losses[0]  # logged every 5 steps: the first window against the last
    assert report["train_generated_tokens"] > 0


def test_chat_data_prompts_end_where_the_reply_begins(tmp_path: Path) -> None:
    template = tmp_path / "chat.jinja"
    template.write_text(TEMPLATE)
    target = save_target(tmp_path / "target", "qwen2")
    out = tmp_path / "hidden"
    corpus = chat_corpus(tmp_path / "chat.jsonl", num=80)
    script().main(flags(target, corpus, out, 2, "--chat-template", str(template), "--prompt-tokens", "64"))
    data = torch.load(tmp_path / "hidden-data.pt", weights_only=True)  # the default cache, next to the checkpoint
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    for ids, weights in zip(data["train_ids"], data["train_weights"], strict=True):
        last_prompt = int(weights.nonzero()[0])  # position prompt_len - 1: its prediction is the target's
        prompt = str(tokenizer.decode(ids[: last_prompt + 1]))
        assert prompt.endswith("<|bos|>assistant\n") and "plus" in prompt  # the user turn, then the header


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_maps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target, corpus = save_target(tmp_path / "target", "llama"), text_corpus(tmp_path / "corpus")
    module = script()
    module.main(flags(target, corpus, tmp_path / "whole", 6, "--data-cache", str(tmp_path / "data.pt")))
    original = module.make_step_fn

    def stopping(*args: Any, **kwargs: Any) -> Any:
        step_fn = original(*args, **kwargs)

        def step(index: int) -> Any:
            if index == 4:  # the checkpoint of step 3 is written; step 4 never finishes
                raise Interrupted
            return step_fn(index)
        return step

    cut = flags(target, corpus, tmp_path / "cut", 6, "--data-cache", str(tmp_path / "data.pt"))
    monkeypatch.setattr(module, "make_step_fn", stopping)
    with pytest.raises(Interrupted):
        module.main(cut)
    monkeypatch.setattr(module, "make_step_fn", original)
    module.main([*cut, "--resume"])
    whole, resumed = TransferMaps.load(tmp_path / "whole"), TransferMaps.load(tmp_path / "cut")
    assert torch.equal(whole.proj.weight, resumed.proj.weight) and torch.equal(whole.proj.bias, resumed.proj.bias)
    assert not torch.equal(whole.proj.weight, TransferMaps(whole.config).proj.weight.half().float())  # it trained

"""The shipped demo checkpoints load the way the runtime loads them and decode losslessly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime.generate import speculative_generate
from runtime.stopping import StopRules
from workers.drafters.falcon import FalconDrafter
from workers.drafters.model import ModelDrafter
from workers.target import TargetVerifier
from workers.training.corpus import is_held_out, stdlib_files, stdlib_root
from workers.tree_policy import TreeConfig

DEMO = Path(__file__).resolve().parents[3] / "models" / "demo"
NEW_TOKENS = 32

pytestmark = pytest.mark.skipif(not (DEMO / "falcon" / "falcon_config.json").exists(),
                                reason="demo models not built (scripts/build_demo_models.sh)")


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(str(DEMO / "target"))


@pytest.fixture(scope="module")
def target() -> TargetVerifier:
    return TargetVerifier.from_pretrained(str(DEMO / "target"))


@pytest.fixture(scope="module")
def prompt(tokenizer: Any) -> list[int]:
    """96 tokens from the middle of the first held-out stdlib file long enough."""
    root = stdlib_root()
    for path in stdlib_files(root):
        if is_held_out(path.relative_to(root).as_posix()):
            ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
            if len(ids) > 400:
                return [int(t) for t in ids[200:296]]
    raise AssertionError("no held-out stdlib file with more than 400 tokens")


@pytest.fixture(scope="module")
def reference(target: TargetVerifier, prompt: list[int]) -> list[int]:
    out = target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS)
    return [int(t) for t in out[0, len(prompt):]]


def test_size_budget_and_fp32_loading(target: TargetVerifier) -> None:
    total = sum(f.stat().st_size for f in DEMO.parent.rglob("*") if f.is_file())
    assert total <= 45e6, f"models/ holds {total / 1e6:.1f} MB, over the 45 MB budget"
    assert target.dtype == torch.float32
    assert target.model.config.num_hidden_layers >= 12  # deep next to a 2-layer Falcon drafter, as in real pairs


@pytest.mark.parametrize("kind", ["falcon", "model"])
def test_speculative_greedy_equals_target_generate(target: TargetVerifier, prompt: list[int],
                                                   reference: list[int], kind: str) -> None:
    drafter = (FalconDrafter.from_pretrained(DEMO / "falcon", DEMO / "target") if kind == "falcon"
               else ModelDrafter.from_pretrained(str(DEMO / "draft")))
    result = speculative_generate(target, drafter, prompt, rules=StopRules(max_new_tokens=NEW_TOKENS),
                                  tree=TreeConfig())
    assert result.token_ids == reference
    assert result.stats.tau > 1.5  # the shipped drafters do draft accepted tokens


def test_draft_model_works_as_hf_assistant(target: TargetVerifier, prompt: list[int],
                                           reference: list[int]) -> None:
    assistant = AutoModelForCausalLM.from_pretrained(str(DEMO / "draft"), dtype=torch.float32)
    out = target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS,
                                assistant_model=assistant)
    assert [int(t) for t in out[0, len(prompt):]] == reference

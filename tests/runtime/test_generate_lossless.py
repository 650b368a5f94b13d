"""Greedy speculative output equals transformers' own greedy generate, token for token (fp32)."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest
import torch

from runtime.generate import speculative_generate
from runtime.stopping import StopRules
from tests.models import hf_greedy, tiny_model, top2_gap
from workers.drafters.base import Drafter
from workers.drafters.falcon import FalconDrafter
from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel
from workers.drafters.model import ModelDrafter
from workers.drafters.ngram import NgramDrafter
from workers.target import TargetVerifier
from workers.tree_policy import TreeConfig

MAX_NEW = 24
PROMPT_LENGTHS = [1, 6, 45, 200]
DYNAMIC = TreeConfig(total_tokens=16, depth=5, top_k=3)
STATIC = TreeConfig(static_paths=((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 0, 0, 0)))


@cache
def target(arch: str) -> Any:
    extra: dict[str, Any] = {"sliding_window": 64} if arch == "mistral" else {}  # long prompts cross the window
    return tiny_model(arch, seed=11, **extra)


def prompt(length: int, seed: int) -> list[int]:
    # a repetitive prompt gives the ngram drafter something to find
    base = torch.randint(3, 96, (max(length // 3, 1),), generator=torch.Generator().manual_seed(seed)).tolist()
    return (base * 4)[:length]


@cache
def reference(arch: str, length: int, seed: int) -> tuple[int, ...]:
    return tuple(hf_greedy(target(arch), prompt(length, seed), MAX_NEW))


def falcon(arch: str, block_size: int) -> FalconDrafter:
    """An untrained Falcon drafter on the target's frozen embedding and LM head."""
    model = target(arch)
    torch.manual_seed(block_size)
    config = FalconConfig.from_target_config(model.config, block_size=block_size)
    embed = model.get_input_embeddings().weight.detach()
    head = model.get_output_embeddings().weight.detach()
    return FalconDrafter(FalconDrafterModel(config, embed, head))


def make_drafter(kind: str, arch: str) -> Drafter | None:
    if kind.startswith("falcon-k"):
        return falcon(arch, int(kind[-1]))
    if kind == "off":
        return None
    if kind == "ngram":
        return NgramDrafter()
    if kind == "model-self":  # a perfect drafter: deep acceptance and re-root hits
        return ModelDrafter(target(arch))
    return ModelDrafter(tiny_model(arch, seed=99, hidden_size=32, num_layers=1))


def assert_lossless(model: Any, ids: list[int], got: list[int], want: list[int]) -> None:
    """Equal, or the first divergence sits at a near-tie of the target's top-2 logits."""
    if got == want:
        return
    i = next((j for j in range(min(len(got), len(want))) if got[j] != want[j]), min(len(got), len(want)))
    gap = top2_gap(model, ids + want[:i])
    assert gap < 1e-4, f"diverged at generated token {i} with a top-2 logit gap of {gap:.2e}: {got} != {want}"


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("kind", ["off", "ngram", "model-small", "model-self", "falcon-k1", "falcon-k2", "falcon-k3"])
@pytest.mark.parametrize("tree", [DYNAMIC, STATIC], ids=["dynamic", "static"])
def test_greedy_equals_hf_generate(arch: str, kind: str, tree: TreeConfig) -> None:
    verifier = TargetVerifier(target(arch))
    drafter = make_drafter(kind, arch)
    eos = frozenset({int(target(arch).config.eos_token_id)})
    for seed, length in enumerate(PROMPT_LENGTHS):
        ids = prompt(length, seed)
        result = speculative_generate(verifier, drafter, ids, rules=StopRules(MAX_NEW, eos), tree=tree)
        assert_lossless(target(arch), ids, result.token_ids, list(reference(arch, length, seed)))
        if kind == "model-self" and length + MAX_NEW < 64 and len(result.token_ids) > 8:
            # a perfect drafter (no sliding window in play) must actually be accepted and re-rooted
            assert result.stats.tau > 1.5
            assert tree.is_static or result.stats.num_reroot_hits > 0  # static trees end at their depth

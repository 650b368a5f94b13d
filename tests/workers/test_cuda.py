"""On a GPU (marker `gpu`, run by scripts/gpu_check.sh; deselected by default): the batched verifier and the
drafters on CUDA stay lossless in fp32, and agree with batch-1 in bf16 wherever the target is not at a tie."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from protocol.params import SamplingParams
from runtime.generate import speculative_generate
from runtime.stopping import StopRules
from tests.models import tiny_model
from workers.batch_mask import Row
from workers.batch_verify import VerifyJob, verify_batch
from workers.drafters.falcon import FalconDrafter
from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel
from workers.drafters.model import ModelDrafter
from workers.slot_cache import SlotCache
from workers.target import TargetVerifier
from workers.tree import DraftTree

pytestmark = pytest.mark.gpu
CUDA = os.environ.get("TANDEM_TEST_DEVICE", "cuda")  # another device (cpu) only to check these tests themselves
MAX_NEW = 24


@pytest.fixture(autouse=True)
def needs_cuda() -> None:
    if CUDA.startswith("cuda") and not torch.cuda.is_available():  # selected with -m gpu without one: loudly
        pytest.fail("-m gpu needs a CUDA device")


def on_cuda(dtype: torch.dtype, seed: int = 11, **overrides: Any) -> Any:
    return tiny_model("llama", seed=seed, **overrides).to(device=CUDA, dtype=dtype)


def greedy_reference(model: Any, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt], device=CUDA)
    out = model.generate(ids, do_sample=False, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW,
                         pad_token_id=model.config.pad_token_id)
    return [int(t) for t in out[0, len(prompt):]]


def falcon_on(target: Any, dtype: torch.dtype) -> FalconDrafter:
    torch.manual_seed(0)
    model = FalconDrafterModel(FalconConfig.from_target_config(target.config),
                               target.get_input_embeddings().weight.detach().float().cpu(),
                               target.get_output_embeddings().weight.detach().float().cpu())
    return FalconDrafter(model, CUDA, dtype)


@pytest.mark.parametrize("kind", ["off", "model-self", "falcon"])
def test_greedy_on_cuda_fp32_equals_generate(kind: str) -> None:
    target = on_cuda(torch.float32)
    drafter = {"off": None, "model-self": ModelDrafter(target), "falcon": falcon_on(target, torch.float32)}[kind]
    verifier = TargetVerifier(target)
    for seed, length in enumerate([1, 6, 45, 200]):
        prompt = ((torch.randint(3, 96, (max(length // 3, 1),), generator=torch.Generator().manual_seed(seed))
                   .tolist()) * 4)[:length]
        result = speculative_generate(verifier, drafter, prompt, rules=StopRules(MAX_NEW, frozenset()))
        assert result.token_ids == greedy_reference(target, prompt), (kind, length)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_batched_rows_on_cuda_agree_with_batch_one(dtype: torch.dtype) -> None:
    target = TargetVerifier(on_cuda(dtype))
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 96, (n,), generator=generator).tolist() for n in (5, 40, 17, 90)]
    tree = DraftTree.from_lists([7, 8, 9, 10, 11], [-1, -1, 0, 0, 2], [0.5] * 5)
    alone: list[torch.Tensor] = []
    together: list[torch.Tensor] = []
    for batch in ([[p] for p in prompts], [prompts]):
        for group in batch:
            cache = SlotCache.for_model(target.config, len(group), 256, target.dtype, target.device)
            slots = [cache.allocate() for _ in group]
            target.forward_rows(cache, slots, [0] * len(group), [Row.chunk(p[:-1]) for p in group])
            for slot, p in zip(slots, group, strict=True):
                cache.set_length(slot, len(p) - 1)
            jobs = [VerifyJob(s, len(p) - 1, p[-1], tree, SamplingParams()) for s, p in zip(slots, group, strict=True)]
            verdicts = verify_batch(target, cache, jobs)
            (alone if len(group) == 1 else together).extend(v.logits for v in verdicts)
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    for one, many in zip(alone, together, strict=True):
        assert torch.allclose(one, many, atol=tolerance, rtol=0)
        top2 = one.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance  # away from a tie the choice is the same
        assert torch.equal(one.argmax(-1)[clear], many.argmax(-1)[clear])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_forward_on_cuda_equals_the_modules(dtype: torch.dtype) -> None:
    """The lean forward issues the modules' kernels in the modules' order: the same states on the GPU."""
    model = on_cuda(dtype)
    lean, modules = TargetVerifier(model), TargetVerifier(model, lean=False)
    assert lean.lean is not None and modules.lean is None
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 96, (n,), generator=generator).tolist() for n in (5, 40, 17)]
    tree = DraftTree.from_lists([7, 8, 9, 10], [-1, -1, 0, 2], [0.5] * 4)
    outs = []
    for verifier in (lean, modules):
        cache = SlotCache.for_model(model.config, 3, 128, dtype, CUDA)
        slots = [cache.allocate() for _ in prompts]
        verifier.forward_rows(cache, slots, [0] * 3, [Row.chunk(p[:-1]) for p in prompts])
        starts = [len(p) - 1 for p in prompts]
        outs.append(verifier.forward_rows(cache, slots, starts, [Row.tree(p[-1], tree) for p in prompts]))
    assert torch.equal(outs[0], outs[1])

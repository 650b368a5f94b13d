"""Sampling through real processes follows the target's law and is reproducible per seed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedModel

from runtime.client import AsyncClient
from runtime.engine import Engine
from runtime.launch import Deployment
from tests.models import tiny_model
from tests.runtime.deploy import write_config
from tests.stats import chi_square_pvalue
from workers.sampling import SamplingParams, target_probs

VOCAB = 24
PROMPT = [5, 9, 5, 9, 5]
NUM_SAMPLES = 600
PARAMS = SamplingParams(temperature=0.9, top_p=0.95, seed=0)


def small_target() -> PreTrainedModel:
    model = tiny_model("llama", seed=21, vocab_size=VOCAB, hidden_size=32, initializer_range=0.08)
    assert isinstance(model, PreTrainedModel)
    return model


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sampling")
    small_target().save_pretrained(root / "target")
    other = tiny_model("llama", seed=5, vocab_size=VOCAB, hidden_size=32)  # a wrong drafter
    other.save_pretrained(root / "draft")
    return write_config(root / "t.yaml", root / "target", "async", {"kind": "model", "model": str(root / "draft")})


@pytest.fixture(scope="module")
def deployment(config: Path) -> Iterator[Deployment]:
    with Deployment(str(config)) as running:
        running.start(timeout_s=120)
        yield running


def exact_second_token_law() -> torch.Tensor:
    model = small_target()
    with torch.no_grad():
        first = target_probs(model(torch.tensor([PROMPT])).logits[0, -1:], PARAMS)[0]
        second = target_probs(model(torch.tensor([[*PROMPT, x] for x in range(VOCAB)])).logits[:, -1], PARAMS)
    return first @ second


def test_runtime_sampling_follows_the_target_law(deployment: Deployment) -> None:
    async def sample() -> list[list[int]]:
        address = deployment.config.coordinator.client_address
        async with AsyncClient(address, timeout_s=120) as client:
            outputs = []
            for start in range(0, NUM_SAMPLES, 50):  # 50 requests in flight at a time
                batch = [client.generate(PROMPT, max_new_tokens=3, temperature=PARAMS.temperature,
                                         top_p=PARAMS.top_p, seed=seed, ignore_eos=True)
                         for seed in range(start, start + 50)]
                outputs += [o.token_ids for o in await asyncio.gather(*batch)]
            again = await client.generate(PROMPT, max_new_tokens=3, temperature=PARAMS.temperature,
                                          top_p=PARAMS.top_p, seed=7, ignore_eos=True)
            assert again.token_ids == outputs[7]  # same seed, same tokens, whatever else was in flight
            return outputs

    outputs = asyncio.run(sample())
    counts = torch.bincount(torch.tensor([o[1] for o in outputs]), minlength=VOCAB).double()
    assert chi_square_pvalue(counts, exact_second_token_law()) > 1e-3


def test_engine_runs_the_same_pipeline_in_process(config: Path, deployment: Deployment) -> None:
    engine = Engine.from_config(str(config))
    local = engine.generate(PROMPT, max_new_tokens=12, temperature=0.9, top_p=0.95, seed=3, ignore_eos=True)
    async def remote() -> list[int]:
        async with AsyncClient(deployment.config.coordinator.client_address, timeout_s=60) as client:
            out = await client.generate(PROMPT, max_new_tokens=12, temperature=0.9, top_p=0.95, seed=3,
                                        ignore_eos=True)
            return out.token_ids
    assert local.token_ids == asyncio.run(remote())
    assert engine.metrics()["num_finished"] == 1

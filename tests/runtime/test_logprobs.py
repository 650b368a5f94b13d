"""Logprobs, prompt scoring and n > 1 through the whole pipeline (in-process `Engine`: the coordinator and
worker handlers the processes run), checked against a plain transformers forward over the same tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from protocol.errors import RequestError
from protocol.logprobs import Logprobs
from runtime.engine import Engine
from runtime.results import GenerationOutput
from tests.models import tiny_model
from tests.runtime.deploy import save_models, write_config
from tests.stats import chi_square_pvalue
from workers.sampling import SamplingParams, target_probs

PROMPTS = [[5, 6, 7, 8, 9, 10], [40, 41, 42, 40, 41, 42, 40, 41]]
MAX_NEW = 24
TOP = 5
SAMPLED: dict[str, Any] = {"temperature": 0.9, "top_p": 0.9, "seed": 77}
ATOL = 1e-5


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return save_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def target() -> Any:
    return tiny_model("llama", seed=11)


def build_engine(models: dict[str, Path], root: Path, mode: str, kind: str | None) -> Engine:
    drafter = None if kind is None else {"kind": kind, **({} if kind == "ngram" else {"model": str(models[
        "falcon" if kind == "falcon" else "draft"])})}
    return Engine.from_config(str(write_config(root / "tandem.yaml", models["target"], mode, drafter)))


@pytest.fixture(scope="module", params=["off", "sync-model", "async-model", "async-ngram", "sync-falcon",
                                        "async-falcon"])
def engine(request: pytest.FixtureRequest, models: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    mode, _, kind = str(request.param).partition("-")
    yield build_engine(models, tmp_path_factory.mktemp(str(request.param)), mode, kind or None)


def reference_log_probs(model: Any, ids: list[int]) -> torch.Tensor:
    """log_softmax of a plain forward in fp32: row p is the distribution of token p + 1."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def assert_matches(logprobs: Logprobs, reference: torch.Tensor, positions: range, token_ids: list[int]) -> None:
    """Each token's log-probability and its top-N equal the reference rows (N = TOP)."""
    assert logprobs.token_ids == token_ids and len(positions) == len(token_ids)
    rows = reference[list(positions)]  # [k, V]
    want = rows.gather(-1, torch.tensor(token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(logprobs.logprobs), want, atol=ATOL, rtol=0)
    top_values = torch.tensor(logprobs.top_logprobs)
    assert top_values.shape == (len(token_ids), TOP)
    torch.testing.assert_close(top_values, rows.topk(TOP, dim=-1).values, atol=ATOL, rtol=0)
    # the ids name those values (a near-tie may order two ids either way)
    torch.testing.assert_close(rows.gather(-1, torch.tensor(logprobs.top_ids)), top_values, atol=ATOL, rtol=0)


def check_output(model: Any, prompt: list[int], out: GenerationOutput) -> None:
    ids = prompt + out.token_ids
    reference = reference_log_probs(model, ids)
    assert out.logprobs is not None and out.prompt_logprobs is not None
    assert_matches(out.logprobs, reference, range(len(prompt) - 1, len(ids) - 1), out.token_ids)
    assert_matches(out.prompt_logprobs, reference, range(len(prompt) - 1), prompt[1:])


@pytest.mark.parametrize("sampling", [{}, SAMPLED], ids=["greedy", "sampled"])
def test_logprobs_equal_a_plain_forward_in_every_mode(engine: Engine, target: Any, sampling: dict[str, Any]) -> None:
    """Speculation never changes what is reported: the raw distribution at each committed position."""
    for prompt in PROMPTS:
        out = engine.generate(prompt, max_new_tokens=MAX_NEW, logprobs=TOP, prompt_logprobs=TOP, **sampling)
        assert len(out.token_ids) == MAX_NEW or out.finish_reason == "stop"
        check_output(target, prompt, out)
        plain = engine.generate(prompt, max_new_tokens=MAX_NEW, **sampling)
        assert plain.token_ids == out.token_ids  # asking for logprobs changes no token
        assert plain.logprobs is None and plain.prompt_logprobs is None


def test_prompt_scoring_without_new_tokens(models: dict[str, Path], tmp_path: Path, target: Any) -> None:
    """max_new_tokens=0 with prompt_logprobs: what lm-eval's loglikelihood requests need, no token generated."""
    engine = build_engine(models, tmp_path, "async", "ngram")
    prompt = PROMPTS[1]
    out = engine.generate(prompt, max_new_tokens=0, prompt_logprobs=TOP)
    assert out.token_ids == [] and out.text == "" and out.finish_reason == "length"
    assert out.prompt_logprobs is not None
    assert_matches(out.prompt_logprobs, reference_log_probs(target, prompt), range(len(prompt) - 1), prompt[1:])
    with pytest.raises(RequestError, match="max_new_tokens") as refused:
        engine.generate(prompt, max_new_tokens=0)  # nothing to do: refused, naming the field
    assert refused.value.param == "max_new_tokens"
    with pytest.raises(RequestError, match="logprobs") as too_many:
        engine.generate(prompt, max_new_tokens=2, logprobs=21)
    assert too_many.value.param == "logprobs"


def test_n_samples_are_reproducible_and_share_the_prompt(models: dict[str, Path], tmp_path: Path,
                                                          target: Any) -> None:
    engine = build_engine(models, tmp_path, "async", "model")
    params: dict[str, Any] = {"max_new_tokens": 12, "n": 4, "logprobs": TOP, **SAMPLED}
    first = engine.generate(PROMPTS[0], **params)
    assert len(first.samples) == 4 and first.samples[0].token_ids == first.token_ids
    again = engine.generate(PROMPTS[0], **params)
    assert [s.token_ids for s in again.samples] == [s.token_ids for s in first.samples]
    assert len({tuple(s.token_ids) for s in first.samples}) > 1  # each sample has its own seed stream
    single = engine.generate(PROMPTS[0], max_new_tokens=12, **SAMPLED)
    assert single.token_ids == first.token_ids  # sample 0 keeps the seed
    for sample in first.samples:
        check_logprobs_only(target, PROMPTS[0], sample)
    assert engine.metrics()["num_prefixes_shared"] >= 3  # samples 1..3 copied sample 0's prompt


def check_logprobs_only(model: Any, prompt: list[int], out: GenerationOutput) -> None:
    ids = prompt + out.token_ids
    assert out.logprobs is not None
    assert_matches(out.logprobs, reference_log_probs(model, ids), range(len(prompt) - 1, len(ids) - 1),
                   out.token_ids)


def test_each_sample_follows_the_target_law_at_its_position(models: dict[str, Path], tmp_path: Path,
                                                            target: Any) -> None:
    """Sample i of n is drawn as a single request would be: over many seeds, each sample's first token follows
    p(x1 | prompt) and its second p(x2) = sum_x1 p(x1) p(x2 | x1) (the distribution test's chi-square)."""
    engine = build_engine(models, tmp_path, "async", "model")
    params = SamplingParams(temperature=1.0, seed=0)
    prompt = PROMPTS[0]
    vocab = int(target.config.vocab_size)
    with torch.no_grad():
        first = target_probs(target(torch.tensor([prompt])).logits[0, -1:], params)[0]
        second = target_probs(target(torch.tensor([[*prompt, x] for x in range(vocab)])).logits[:, -1], params)
    laws = [first, first @ second]
    counts = torch.zeros(4, 2, vocab)
    for seed in range(200):
        out = engine.generate(prompt, max_new_tokens=2, n=4, temperature=1.0, seed=seed, ignore_eos=True)
        for index, sample in enumerate(out.samples):
            for position in range(2):
                counts[index, position, sample.token_ids[position]] += 1
    for index in range(4):
        for position in range(2):
            assert chi_square_pvalue(counts[index, position], laws[position]) > 1e-3, (index, position)

"""Hidden Transfer through the real coordinator and verifier worker (in-process, over the codec): greedy
output equals `generate` with it on, alone (a deployment with no drafter speculates by itself) and beside a
drafter, in async and sync mode; its guess trees are really verified (their acceptance on a real target:
tests/workers/training/test_shipped_hidden.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from runtime.config import TandemConfig
from runtime.coordinator import Coordinator
from runtime.engine import Engine
from tests.models import hf_greedy, tiny_model
from tests.runtime.test_batched_serving import drafter_of, prompt
from workers.drafter_worker import DrafterWorker
from workers.hidden_source import HiddenSource
from workers.hidden_transfer import HiddenConfig, TransferMaps
from workers.target import TargetVerifier
from workers.verifier_worker import VerifierWorker

MAX_NEW = 24
TREE = {"total_tokens": 12, "depth": 5, "top_k": 3}


def hidden_source(model: Any, layer: int = 1) -> HiddenSource:
    return HiddenSource(TransferMaps(HiddenConfig.for_target(model.config, layer, 2)), model.config.num_hidden_layers)


def engine(model: Any, mode: str, drafter: str | None, vocab_size: int = 96, **verifier: Any) -> Engine:
    data: dict[str, Any] = {"verifier": {"model": "unused", "hidden_transfer": "unused"},
                            "speculation": {"mode": mode, "tree": TREE}}
    if drafter is not None:
        data["drafter"] = {"kind": "ngram"}
    config = TandemConfig.from_dict(data)
    coordinator = Coordinator(config, None, {"vocab_size": vocab_size, "hidden_size": model.config.hidden_size},
                              frozenset({2}))
    worker = VerifierWorker(TargetVerifier(model), "v", max_running=4, hidden=hidden_source(model), **verifier)
    for rows in (1, 2, 4):  # a flat cost shape (rows free, as on a GPU below its width): timing-free choices
        for width in range(1, worker.cost.max_width + 1):
            worker.cost.calibrate(rows, width, 1.0)
    handlers: list[Any] = [worker]
    if drafter is not None:
        handlers.append(DrafterWorker(drafter_of(drafter, model), config.speculation.tree, mode, "d",
                                      vocab_size=vocab_size, hidden_size=model.config.hidden_size))
    return Engine(coordinator, handlers)


def test_config_without_drafter_needs_hidden_transfer() -> None:
    assert TandemConfig.from_dict({"verifier": {"model": "m", "hidden_transfer": "h"}}).drafter is None
    with pytest.raises(ValueError, match="hidden_transfer"):
        TandemConfig.from_dict({"verifier": {"model": "m"}})


@pytest.mark.parametrize("mode,drafter", [("async", None), ("sync", None), ("async", "falcon"), ("sync", "model")])
def test_greedy_output_equals_generate(mode: str, drafter: str | None) -> None:
    model = tiny_model("llama", seed=11, num_layers=3)
    run = engine(model, mode, drafter)
    verifier = run.handlers[b"v"]
    for seed, length in enumerate([6, 45, 13, 1]):
        ids = prompt(length, seed)
        out = run.generate(ids, max_new_tokens=MAX_NEW)
        assert out.token_ids == hf_greedy(model, ids, MAX_NEW), (seed, length)
    assert verifier.counters["num_hidden_trees"] > 0  # the slots ran and their guesses became trees
    if drafter is None:
        assert verifier.counters["num_hidden_verifications"] > 0


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_greedy_output_equals_generate_other_architectures(arch: str) -> None:
    extra: dict[str, Any] = {"sliding_window": 12} if arch == "mistral" else {}
    model = tiny_model(arch, seed=3, num_layers=3, **extra)
    run = engine(model, "async", None)
    ids = prompt(30, 4)
    assert run.generate(ids, max_new_tokens=MAX_NEW).token_ids == hf_greedy(model, ids, MAX_NEW)


def test_verifier_alone_runs_several_requests_in_one_forward() -> None:
    torch.manual_seed(0)
    model = tiny_model("llama", seed=11, num_layers=3)
    run = engine(model, "async", None)
    streams = {i: run.stream(prompt(10 + 7 * i, i), max_new_tokens=MAX_NEW) for i in range(3)}
    outputs = {i: [t for chunk in s for t in chunk.token_ids] for i, s in streams.items()}
    for i, tokens in outputs.items():
        assert tokens == hf_greedy(model, prompt(10 + 7 * i, i), MAX_NEW)


SAMPLING = [(1.2, 0, 0.7), pytest.param(1.0, 0, 1.0, marks=pytest.mark.slow),
            pytest.param(0.8, 6, 1.0, marks=pytest.mark.slow)]


@pytest.mark.parametrize("temperature,top_k,top_p", SAMPLING)
def test_sampled_third_token_follows_the_target_law(temperature: float, top_k: int, top_p: float) -> None:
    """Sampled with Hidden Transfer alone: the third token (committed by verifications of guess trees) follows
    the target's exact law (chi-square), and guess trees are verified and accepted along the way."""
    from tests.runtime.test_sampling_distribution import NUM_SAMPLES, PROMPT, VOCAB, target
    from tests.stats import chi_square_pvalue
    from workers.sampling import SamplingParams, target_probs

    model = target()
    run = engine(model, "async", None, vocab_size=VOCAB, local_lookup=False)
    counts = torch.zeros(VOCAB)
    for seed in range(NUM_SAMPLES):
        out = run.generate(PROMPT, max_new_tokens=3, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                           ignore_eos=True)
        counts[out.token_ids[2]] += 1
    params = SamplingParams(temperature, top_p, top_k, seed=0)
    with torch.no_grad():
        first = target_probs(model(torch.tensor([PROMPT])).logits[0, -1:], params)[0]  # [V]
        pairs = torch.tensor([[*PROMPT, a, b] for a in range(VOCAB) for b in range(VOCAB)])
        logits = model(pairs).logits  # [V*V, 7, V]
        second = target_probs(logits[::VOCAB, -2], params)  # [V, V]: p(x2 | x1)
        third = target_probs(logits[:, -1], params).view(VOCAB, VOCAB, VOCAB)  # p(x3 | x1, x2)
    law = torch.einsum("a,ab,abc->c", first, second, third)
    assert chi_square_pvalue(counts, law) > 1e-3
    counters = run.handlers[b"v"].counters
    assert counters["num_hidden_verifications"] > NUM_SAMPLES // 2 and counters["num_hidden_accepted"] > 0


def test_shipped_config_loads_without_a_drafter() -> None:
    from runtime.config import REPO_ROOT

    config = TandemConfig.load(REPO_ROOT / "configs" / "hidden.yaml")
    assert config.drafter is None and not config.uses_drafter
    assert config.verifier.hidden_transfer == str(REPO_ROOT / "models" / "demo" / "hidden")  # made absolute


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_first_verification_has_the_prefills_guesses(mode: str) -> None:
    """The prompt's last entry runs Hidden Transfer slots in the prefill, so the first verification (which
    commits the second token) already holds a guess tree; before, it had none. Output still equals generate."""
    model = tiny_model("llama", seed=11, num_layers=3)
    run = engine(model, mode, None, local_lookup=False)  # no other source: a verified guess tree is the prefill's
    verifier = run.handlers[b"v"]
    for seed, length in enumerate([6, 30]):
        ids = prompt(length, seed)
        assert run.generate(ids, max_new_tokens=2, ignore_eos=True).token_ids == hf_greedy(model, ids, 2)
    assert verifier.counters["num_prefill_guesses"] == 2
    assert verifier.counters["num_verifications"] == 2 and verifier.counters["num_hidden_verifications"] == 2

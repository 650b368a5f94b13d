"""speculation.target_candidates (lossy, opt-in): 0 stays exact; W > 1 reports every commit that took a
candidate other than the target's choice, and the output differs from greedy exactly when one did."""

from __future__ import annotations

import pytest

from protocol.errors import ConfigError
from runtime.bench.candidates import evaluate, first_difference
from runtime.builders import load_tokenizer
from runtime.config_schema import SpeculationConfig
from runtime.demo import DEMO_PROMPTS
from tests.models import hf_greedy
from workers.hf_model import load_causal_lm


def test_candidates_are_reported_and_zero_is_exact() -> None:
    tokenizer = load_tokenizer("models/demo/target")
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in DEMO_PROMPTS[:3]]
    exact, wide = evaluate("configs/demo.yaml", prompts, 48, [3], mode="sync")
    model = load_causal_lm("models/demo/target")
    assert exact.result.outputs == [hf_greedy(model, p, 48) for p in prompts]
    assert exact.num_off_top == 0 and exact.equal_share == 1.0
    assert wide.num_off_top > 0
    assert wide.equal_share < 1.0  # a commit off the top changes the text from there on
    assert wide.tokens_before_difference < 48
    assert all(len(out) == 48 for out in wide.result.outputs)


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 4]) == 2
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_width_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="target_candidates"):
        SpeculationConfig(target_candidates=1)
    assert SpeculationConfig(target_candidates=3).target_candidates == 3

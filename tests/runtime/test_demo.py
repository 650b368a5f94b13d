"""What the demo measures: HF generate on the deployment's cores, τ of the timed requests alone."""

from __future__ import annotations

from runtime.builders import load_tokenizer
from runtime.config import TandemConfig
from runtime.demo import DEMO_PROMPTS, _tau, describe, generate_cores, measure_generate
from tests.models import hf_greedy
from workers.hf_model import load_causal_lm


def test_generate_peer_is_greedy_generate_on_the_workers_cores() -> None:
    config = TandemConfig.load("configs/demo.yaml")
    assert generate_cores(config) == [0, 1]  # verifier core 1 + drafter core 0
    measured = measure_generate(config, DEMO_PROMPTS[:1], 8)
    ids = load_tokenizer("models/demo/target").encode(DEMO_PROMPTS[0], add_special_tokens=False)
    assert measured.outputs == [hf_greedy(load_causal_lm("models/demo/target"), ids, 8)]
    assert measured.tokens_per_s > 0 and measured.label == "cores 0,1, 2 threads"
    assert "14 layers" in describe(config) and "Falcon" in describe(config)


def test_tau_leaves_the_warm_up_out() -> None:
    before = {"num_verifications": 10, "num_committed": 30}  # the warm-up request
    after = {"num_verifications": 20, "num_committed": 55}
    assert _tau(before, after) == 2.5
    assert _tau(after, after) == 1.0

"""The virtual-clock simulation: real handlers and models, durations from a table, so its τ and timings are
the same on every run and its output is the target's own."""

from __future__ import annotations

from runtime.bench.simulate import Timing, simulate
from runtime.builders import load_tokenizer
from tests.models import hf_greedy
from workers.hf_model import load_causal_lm

CONFIG = "configs/demo.yaml"
PROMPT = "def read_config(path):\n    \"\"\"Read a JSON configuration file.\"\"\"\n"


def test_simulation_is_exact_and_repeatable() -> None:
    ids = load_tokenizer("models/demo/target").encode(PROMPT, add_special_tokens=False)
    reference = hf_greedy(load_causal_lm("models/demo/target"), ids, 24)
    first = simulate(CONFIG, [ids], 24, mode="async")
    second = simulate(CONFIG, [ids], 24, mode="async")
    off = simulate(CONFIG, [ids], 24, mode="off")
    assert first.outputs == [reference] == off.outputs == second.outputs
    assert first.seconds == second.seconds and first.metrics["tau"] == second.metrics["tau"]
    # off: one verification per token, each costing the table's root-only time (plus one prefill)
    assert off.metrics["num_verifications"] == 23
    assert off.verifier_busy_s > 23 * Timing().verify_s(0)
    assert first.metrics["num_verifications"] < 23  # the drafter's trees were accepted at least once
    assert 0 < first.drafter_busy_s < first.seconds[0]

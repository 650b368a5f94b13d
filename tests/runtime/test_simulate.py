"""The virtual-clock simulation: real handlers and models, durations from a table, so its τ and timings are
the same on every run and its output is the target's own."""

from __future__ import annotations

from pathlib import Path

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


def test_a_pruning_drafter_keeps_growing_and_stays_exact(tmp_path: Path) -> None:
    """With `tree.prune_living` a full living tree drops leaves and grows on instead of idling; without it (the
    default) the drafter idles more. Both outputs are the target's own."""
    ids = load_tokenizer("models/demo/target").encode(PROMPT, add_special_tokens=False)
    reference = hf_greedy(load_causal_lm("models/demo/target"), ids, 48)
    text = Path(CONFIG).read_text().replace("models/demo", str(Path("models/demo").resolve()))
    on = tmp_path / "on.yaml"
    on.write_text(text.replace("top_k: 8}", "top_k: 8, prune_living: true}"))
    assert on.read_text() != text
    pruning = simulate(str(on), [ids], 48, mode="async")
    stopping = simulate(CONFIG, [ids], 48, mode="async")
    assert pruning.outputs == stopping.outputs == [reference]
    assert pruning.metrics["num_drafter_prunes"] > 0 and pruning.metrics["num_drafter_nodes_pruned"] > 0
    assert stopping.metrics["num_drafter_prunes"] == 0
    # on the virtual clock: the share of the run the drafter spent growing
    assert pruning.drafter_busy_s / sum(pruning.seconds) > stopping.drafter_busy_s / sum(stopping.seconds)

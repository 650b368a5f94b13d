"""The load driver end to end on a tiny target: both peers in this process and two real Tandem deployments
(off, async with the n-gram drafter) at concurrency 1 and 3, then the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from runtime.bench.load import load_methods, run_load, write_outputs
from runtime.bench.load_records import LoadSettings
from runtime.bench.runner import Plan
from runtime.bench.tandem import base_data
from tests.models import hf_greedy, tiny_model
from tests.runtime.deploy import write_config

PROMPTS = [[5, 6, 7, 8, 9, 10], [40, 41, 42, 40, 41, 42, 40], list(range(3, 30)), [11, 12]]
MAX_NEW = 8
LEVELS = [1, 3]
METHODS = ["hf-generate", "hf-generate-batch", "tandem-off", "tandem-async-ngram"]


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("load_bench")
    tiny_model("llama", seed=11).save_pretrained(root / "target")
    config = write_config(root / "base.yaml", root / "target", "async", {"kind": "ngram"})
    cores = sorted(psutil.Process().cpu_affinity() or [0])
    plan = Plan(config_path=str(config), base=base_data(str(config)), drafters={"ngram": {}},
                target_dir=str(root / "target"), assistant_dir=None, dtype=torch.float32, device="cpu",
                cores=cores, one_core=cores[:1], label="tiny")
    settings = LoadSettings(PROMPTS, LEVELS, max_new_tokens=MAX_NEW, num_requests=5)
    out = root / "out"
    payload = run_load(plan, METHODS, settings, out)
    write_outputs(payload, out)
    return payload, out


def test_load_methods_are_the_batching_peers_then_tandem() -> None:
    """Variants come after the modes, each only where its drafter is on offer (Hidden Transfer alone needs none)."""
    assert load_methods(("ngram",)) == ["hf-generate", "hf-generate-batch", "tandem-off", "tandem-sync-ngram",
                                        "tandem-async-ngram", "tandem-async-hidden"]
    assert load_methods(("falcon",))[-3:] == ["tandem-async-hidden", "tandem-async-falcon-hidden",
                                              "tandem-async-falcon-cand3"]


def test_a_lossy_variant_is_not_compared_with_the_reference() -> None:
    from runtime.bench.load_records import LevelRun, LoadRecord
    from runtime.bench.load_report import level_row

    records = [LoadRecord(0, token_ids=[1, 2, 3], chunk_s=[0.1], chunk_tokens=[3])]
    run = LevelRun("tandem-async-falcon-cand3", "tandem", 1, {}, records, 1.0, None, {})
    row = level_row(run, [[9, 9, 9]], 3)
    assert row["lossy"] and row["equals_reference"] is None
    exact = level_row(LevelRun("tandem-async-falcon", "tandem", 1, {}, records, 1.0, None, {}), [[9, 9, 9]], 3)
    assert not exact["lossy"] and exact["equals_reference"] is False


def test_every_tandem_output_equals_batch_1_greedy_generate(result: tuple[dict[str, Any], Path]) -> None:
    payload, out = result
    target = tiny_model("llama", seed=11)
    target.generation_config.eos_token_id = None  # exactly MAX_NEW, as the bench asks
    reference = [hf_greedy(target, p, MAX_NEW) for p in PROMPTS]
    raw = json.loads((out / "raw_load_runs.json").read_text())
    tandem = [run for run in raw if run["kind"] == "tandem"]
    assert {(r["method"], r["concurrency"]) for r in tandem} == {(m, c) for m in METHODS[2:] for c in LEVELS}
    for run in tandem:
        assert run["error"] is None
        assert [r["token_ids"] for r in run["records"]] == [reference[r["prompt_index"]] for r in run["records"]]
        assert all(r["stats"].get("tau") is not None for r in run["records"])
    rows = [r for r in payload["rows"] if r["kind"] == "tandem"]
    assert all(r["equals_reference"] is True and r["tau"] is not None for r in rows)


def test_every_level_serves_n_requests_of_exactly_max_new_tokens(result: tuple[dict[str, Any], Path]) -> None:
    payload, out = result
    raw = json.loads((out / "raw_load_runs.json").read_text())
    assert [(r["method"], r["concurrency"]) for r in raw] == [(m, c) for m in METHODS for c in LEVELS]
    for run in raw:
        assert run["error"] is None, run["error"]
        assert [r["prompt_index"] for r in run["records"]] == [0, 1, 2, 3, 0]  # 5 requests, prompts cycled
        assert all(len(r["token_ids"]) == MAX_NEW == sum(r["chunk_tokens"]) for r in run["records"])
    assert all(r["num_requests"] == 5 and r["num_tokens"] == 5 * MAX_NEW and r["num_short"] == 0
               for r in payload["rows"])


def test_json_markdown_and_plots_hold_one_row_per_method_and_level(result: tuple[dict[str, Any], Path]) -> None:
    _, out = result
    saved = json.loads((out / "results_load.json").read_text())
    assert [(r["method"], r["concurrency"]) for r in saved["rows"]] == [(m, c) for m in METHODS for c in LEVELS]
    assert saved["settings"]["num_requests"] == {"1": 5, "3": 5}
    generate_3 = next(r for r in saved["rows"] if (r["method"], r["concurrency"]) == ("hf-generate", 3))
    assert generate_3["vs_generate"] == 1.0 and generate_3["vs_own_lowest"] > 0
    table = [line for line in (out / "results_load.md").read_text().splitlines()
             if line.startswith("| ") and "---" not in line][1:]
    assert [tuple(cell.strip() for cell in line.split("|")[1:3]) for line in table] == \
        [(m, str(c)) for m in METHODS for c in LEVELS]
    assert (out / "load_throughput.png").stat().st_size > 0 and (out / "load_latency.png").stat().st_size > 0

"""Rows from hand-built runs, and the JSON / markdown / PNG writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.bench import report, rows
from runtime.bench.plots import plot_all
from runtime.bench.records import MethodRun, RequestRecord

STATS = {"num_verifications": 4, "num_committed": 10, "accepted_per_depth": [3, 2], "reached_per_depth": [4, 4]}


def _runs() -> dict[str, MethodRun]:
    base = MethodRun("hf-generate", "peer", {"device": "cpu", "cores": [0, 1], "threads": 2},
                     [[RequestRecord([1] * 10, 1.0), RequestRecord([2] * 10, 1.0)],
                      [RequestRecord([1] * 10, 0.5), RequestRecord([2] * 10, 0.5)]], peak_rss_mb={"bench": 100.0})
    spec = MethodRun("tandem-async-falcon", "tandem",
                     {"verifier": {"device": "cpu", "cores": [1], "threads": 1},
                      "drafter": {"device": "cpu", "cores": [0], "threads": 1}},
                     [[RequestRecord([1] * 10, 0.25, STATS), RequestRecord([9] * 10, 0.25, STATS)]],
                     metrics={"verifier_busy_fraction": 0.9, "reroot_hit_rate": 0.5, "drafter_background_steps": 4,
                              "num_verifications": 8},
                     peak_rss_mb={"coordinator": 50.0, "verifier": 200.0, "drafter": 150.0},
                     cpu_util={"drafter": 0.7})
    failed = MethodRun("tandem-sync-model", "tandem", {}, error="TandemError: not ready")
    return {"hf-generate": base, "tandem-async-falcon": spec, "tandem-sync-model": failed}


def _table() -> list[dict[str, Any]]:
    runs = _runs()
    base_rate = rows.rate_of(runs["hf-generate"])
    return [rows.method_row(r, base_rate, None, runs["hf-generate"].outputs) for r in runs.values()]


def test_rows_from_hand_built_runs() -> None:
    base, spec, failed = _table()
    assert base["tokens_per_s"] == pytest.approx(40 / 3.0)
    assert base["tokens_per_s_best_pass"] == pytest.approx(20.0)
    assert base["ms_per_token"]["p50"] == pytest.approx(75.0)  # 100, 100, 50, 50 ms/token
    assert base["speedup_vs_generate"] == pytest.approx(1.0) and base["lossless"] is True
    assert base["tau"] is None
    assert spec["tokens_per_s"] == pytest.approx(40.0)
    assert spec["speedup_vs_generate"] == pytest.approx(40.0 / (40 / 3.0))
    assert spec["speedup_vs_generate_1core"] is None
    assert spec["tau"] == pytest.approx(20 / 8)
    assert spec["acceptance_per_depth"] == pytest.approx([0.75, 0.5])
    assert spec["background_steps_per_verification"] == pytest.approx(0.5)
    assert spec["drafter_steps_per_verification"] is None  # the runtime does not report drafter_steps yet
    assert spec["lossless"] is False  # second output differs from hf-generate's
    assert failed == {"method": "tandem-sync-model", "kind": "tandem", "placement": {},
                      "error": "TandemError: not ready"}


def test_ratios_pair_async_with_sync_of_the_same_drafter() -> None:
    table = [{"method": "tandem-sync-ngram", "tokens_per_s": 10.0}, {"method": "tandem-async-ngram",
                                                                     "tokens_per_s": 12.0},
             {"method": "tandem-async-falcon", "tokens_per_s": 5.0}]
    assert rows.ratios(table) == pytest.approx({"async_over_sync_ngram": 1.2})


def _payload() -> dict[str, Any]:
    return {"label": "test bench", "notes": ["scale mode: random-weight target"],
            "machine": {"cpu_model": "Test CPU", "num_cores": 2, "gpus": [], "platform": "Linux", "torch": "2",
                        "transformers": "5"},
            "settings": {"config": "configs/demo.yaml", "num_prompts": 2, "max_new_tokens": 10, "temperature": 0.0,
                         "seed": None, "repeats": 2},
            "rows": _table(), "ratios": {"async_over_sync_falcon": 1.1}, "trace": None}


def test_json_and_markdown_hold_every_method(tmp_path: Path) -> None:
    text = report.write(_payload(), tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in saved["rows"]] == ["hf-generate", "tandem-async-falcon", "tandem-sync-model"]
    assert (tmp_path / "results.md").read_text() == text
    table_lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + 3  # header + one per method
    assert "| tandem-async-falcon | v 1 / 1 + d 0 / 1 | 40.0 |" in text
    assert "| 0,1 / 2 |" in text and "failed: TandemError: not ready" in text
    assert "async_over_sync_falcon: 1.100" in text and "Test CPU" in text
    assert "note: scale mode: random-weight target" in text


def test_plots_are_pngs(tmp_path: Path) -> None:
    paths = plot_all(_table(), tmp_path, "test")
    assert [p.name for p in paths] == ["speedup.png", "acceptance.png", "utilisation.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_drafter_columns_are_empty_without_a_drafter() -> None:
    off = MethodRun("tandem-off", "tandem", {"verifier": {"device": "cpu", "cores": [1], "threads": 1}},
                    [[RequestRecord([1] * 4, 0.1, {"num_verifications": 4, "num_committed": 4})]],
                    metrics={"verifier_busy_fraction": 0.8, "reroot_hit_rate": 0.0, "drafter_background_steps": 0,
                             "num_verifications": 5})
    row = rows.method_row(off, 10.0, None, None)
    assert (row["reroot_hit_rate"], row["background_steps_per_verification"]) == (None, None)
    assert row["verifier_busy_fraction"] == 0.8 and row["tau"] == pytest.approx(1.0) and row["lossless"] is None

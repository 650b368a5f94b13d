"""Load rows from level runs (ratios, exactness, τ, errors) and the files they are written to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime.bench.load_plots import plot_load
from runtime.bench.load_records import LevelRun, LoadRecord, LoadSettings
from runtime.bench.load_report import level_rows, markdown, write

REFERENCE = [[1, 2, 3], [4, 5, 6]]
MACHINE = {"cpu_model": "test cpu", "num_cores": 2, "gpus": [], "platform": "linux", "torch": "2", "transformers": "5"}


def _run(method: str, c: int, wall_s: float, outputs: list[list[int]], busy_s: float | None = None,
         tau_stats: dict[str, Any] | None = None) -> LevelRun:
    kind = "tandem" if method.startswith("tandem") else "peer"
    records = [LoadRecord(i % 2, tokens, [0.1, 0.3], [1, len(tokens) - 1], dict(tau_stats or {}))
               for i, tokens in enumerate(outputs)]
    return LevelRun(method, kind, c, {"cores": [0]}, records, wall_s, busy_s, {"bench": 100.0})


def _rows() -> list[dict[str, Any]]:
    stats = {"num_verifications": 2, "num_committed": 6}
    runs = [_run("hf-generate", 1, 2.0, REFERENCE), _run("hf-generate", 2, 1.0, [[1, 2, 3], [4, 5, 7]]),
            _run("tandem-off", 1, 1.0, REFERENCE, busy_s=0.5, tau_stats=stats),
            _run("tandem-off", 2, 0.5, REFERENCE, busy_s=0.5, tau_stats=stats),
            LevelRun("hf-generate-batch", "peer", 1, {}, error="RuntimeError: no CPU")]
    return level_rows(runs, REFERENCE, max_new_tokens=3)


def test_rows_carry_ratios_latencies_exactness_and_tau() -> None:
    rows = {(r["method"], r["concurrency"]): r for r in _rows()}
    off2 = rows[("tandem-off", 2)]
    assert off2["tokens_per_s"] == 12.0 and off2["num_tokens"] == 6 and off2["num_short"] == 0
    assert off2["vs_generate"] == 2.0 and off2["vs_own_lowest"] == 2.0
    assert off2["ttft_ms"]["p50"] == pytest.approx(100.0) and off2["itl_ms"]["p50"] == pytest.approx(100.0)
    assert off2["tau"] == 3.0 and off2["verifier_busy_fraction"] == 1.0 and off2["equals_reference"] is True
    gen2 = rows[("hf-generate", 2)]
    assert (gen2["equals_reference"], gen2["num_mismatched"], gen2["tau"]) == (False, 1, None)
    assert rows[("hf-generate-batch", 1)]["error"] == "RuntimeError: no CPU"


def test_without_a_reference_nothing_is_checked() -> None:
    rows = level_rows([_run("tandem-off", 1, 1.0, [[9, 9]])], None, max_new_tokens=3)
    assert rows[0]["equals_reference"] is None and rows[0]["num_short"] == 1


def test_markdown_json_and_plots_are_written(tmp_path: Path) -> None:
    settings = LoadSettings([[5], [6]], [1, 2], max_new_tokens=3)
    payload: dict[str, Any] = {"label": "test", "machine": MACHINE, "notes": [], "rows": _rows(),
               "settings": {"config": "c.yaml", "concurrency": [1, 2], "num_requests": {1: 2, 2: 2},
                            "num_prompts": len(settings.prompts), "max_new_tokens": 3, "temperature": 0.0,
                            "seed": None, "device": "cpu", "cores": [0]}}
    text = write(payload, tmp_path)
    assert (tmp_path / "results_load.json").exists() and (tmp_path / "results_load.md").read_text() == text
    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[:2] for line in table] == [
        ["| hf-generate", "1"], ["| hf-generate", "2"], ["| tandem-off", "1"], ["| tandem-off", "2"],
        ["| hf-generate-batch", "1"]]
    assert "no (1 differ)" in table[1] and "failed: RuntimeError: no CPU" in table[4]
    assert "machine: test cpu, 2 cores, no GPU" in markdown(payload)
    paths = plot_load(payload["rows"], tmp_path, "test")
    assert [p.name for p in paths] == ["load_throughput.png", "load_latency.png"]
    assert all(p.stat().st_size > 0 for p in paths)

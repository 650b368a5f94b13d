"""Merging span files of several processes into one Chrome trace, and the timeline summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.trace import Tracer
from runtime.bench import trace


def _write_process(folder: Path, name: str, pid: int, spans: list[tuple[str, float, float]]) -> None:
    """A span file as protocol.trace writes it, with a chosen pid (one file per 'process')."""
    tracer = Tracer()
    tracer.configure(folder, name)
    for span_name, start, duration in spans:
        tracer.complete(span_name, start, duration)
    tracer.flush()
    assert tracer._file is not None
    tracer._file.close()
    path = next(p for p in folder.glob(f"{name}-*.jsonl"))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    path.unlink()
    (folder / f"{name}-{pid}.jsonl").write_text("".join(json.dumps({**e, "pid": pid}) + "\n" for e in lines))


@pytest.fixture
def spans_dir(tmp_path: Path) -> Path:
    _write_process(tmp_path, "verifier", 101, [("verify", 0.0, 400.0), ("wait", 400.0, 200.0),
                                               ("verify", 600.0, 400.0), ("accept", 900.0, 50.0)])
    _write_process(tmp_path, "drafter", 202, [("draft_step", 100.0, 300.0), ("draft_step", 300.0, 300.0)])
    return tmp_path


def test_merge_gives_one_valid_chrome_trace(spans_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    trace.merge(spans_dir, out)
    data = json.loads(out.read_text())
    assert data["displayTimeUnit"] == "ms"
    events = data["traceEvents"]
    assert trace.process_names(events) == {101: "verifier", 202: "drafter"}
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == 6
    assert [e["ts"] for e in complete] == sorted(e["ts"] for e in complete)
    assert all({"name", "ts", "dur", "pid", "tid"} <= e.keys() for e in complete)


def test_truncated_last_line_is_skipped(spans_dir: Path) -> None:
    with (spans_dir / "drafter-202.jsonl").open("a") as handle:
        handle.write('{"name": "draft_step", "ph": "X", "ts": 9')  # killed mid-write
    events, num_bad = trace.read_events(spans_dir)
    assert num_bad == 1
    assert len(trace.spans(events)) == 6


def test_summary_busy_fraction_and_wait(spans_dir: Path) -> None:
    events, _ = trace.read_events(spans_dir)
    assert trace.extent(events) == (0.0, 1000.0)
    summary = trace.summary(events)
    verifier, drafter = summary["processes"]["verifier-101"], summary["processes"]["drafter-202"]
    assert summary["window_ms"] == pytest.approx(1.0)
    assert verifier["busy_fraction"] == pytest.approx(0.8)  # 0-400 and 600-1000 (accept is nested); wait excluded
    assert verifier["wait_ms"] == pytest.approx(0.2)
    assert verifier["span_counts"] == {"verify": 2, "wait": 1, "accept": 1}
    assert drafter["busy_fraction"] == pytest.approx(0.5)  # 100-400 and 300-600 overlap: 100-600


def test_middle_window_and_gantt(spans_dir: Path, tmp_path: Path) -> None:
    events, _ = trace.read_events(spans_dir)
    assert trace.middle_window(events, 0.5) == (350.0, 850.0)  # centred on the median verify span (600 µs)
    no_verify = [e for e in events if e.get("name") != "verify"]
    lo, hi = trace.extent(no_verify)
    assert trace.middle_window(no_verify, 0.5) == ((lo + hi) / 2 - 250, (lo + hi) / 2 + 250)  # else the middle
    assert trace.middle_window(events, 300.0) == (0.0, 1000.0)  # longer than the trace: all of it
    png = trace.gantt(events, tmp_path / "gantt.png", window_ms=0.5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""One timeline from every process's span files (protocol/trace.py): a Chrome-trace JSON that opens
in Perfetto, a per-process busy summary, and a PNG Gantt of drafter vs verifier.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from runtime.bench.metrics import busy_fraction, clip_intervals, union_length

IDLE_SPANS = frozenset({"wait"})  # spans that mean "nothing to do"; not counted as busy


def read_events(folder: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Every event of every `*.jsonl` in `folder`, and how many lines could not be read (a process
    killed mid-write leaves a truncated last line)."""
    events, num_bad = [], 0
    for path in sorted(Path(folder).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                num_bad += 1
                continue
            if isinstance(event, dict) and "ph" in event:
                events.append(event)
            else:
                num_bad += 1
    return events, num_bad


def merge(folder: str | Path, out_path: str | Path) -> list[dict[str, Any]]:
    """Write one Chrome-trace JSON of the folder's events (sorted by time) and return the events."""
    events, _ = read_events(folder)
    events.sort(key=lambda e: (e.get("ph") != "M", e.get("ts", 0.0)))
    Path(out_path).write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return events


def process_names(events: list[dict[str, Any]]) -> dict[int, str]:
    """pid -> name from the `process_name` metadata events."""
    return {int(e["pid"]): str(e.get("args", {}).get("name", e["pid"])) for e in events
            if e.get("ph") == "M" and e.get("name") == "process_name" and "pid" in e}


def spans(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("ph") == "X" and "ts" in e and "dur" in e]


def extent(events: list[dict[str, Any]]) -> tuple[float, float]:
    """(first start, last end) of all spans in µs."""
    items = spans(events)
    if not items:
        return 0.0, 0.0
    return min(e["ts"] for e in items), max(e["ts"] + e["dur"] for e in items)


def middle_window(events: list[dict[str, Any]], width_ms: float | None) -> tuple[float, float]:
    """`width_ms` around the middle of the verifier's work (its median `verify` span; the middle of the
    trace when it has none), so the window shows decoding, not the idle gaps between requests; the
    whole trace when None or when it is shorter."""
    lo, hi = extent(events)
    if width_ms is None or (hi - lo) <= width_ms * 1000:
        return lo, hi
    starts = sorted(e["ts"] for e in spans(events) if e["name"] == "verify")
    mid = starts[len(starts) // 2] if starts else (lo + hi) / 2
    mid = min(max(mid, lo + width_ms * 500), hi - width_ms * 500)
    return mid - width_ms * 500, mid + width_ms * 500


def summary(events: list[dict[str, Any]], window: tuple[float, float] | None = None) -> dict[str, Any]:
    """Per process: busy fraction (union of non-wait spans / window), total `wait` ms, span counts by name."""
    window = window or extent(events)
    names = process_names(events)
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in spans(events):
        by_pid[int(event["pid"])].append(event)
    processes = {}
    for pid, items in sorted(by_pid.items()):
        busy = [(e["ts"], e["ts"] + e["dur"]) for e in items if e["name"] not in IDLE_SPANS]
        waits = [(e["ts"], e["ts"] + e["dur"]) for e in items if e["name"] in IDLE_SPANS]
        counts: dict[str, int] = defaultdict(int)
        for e in items:
            counts[e["name"]] += 1
        processes[f"{names.get(pid, 'process')}-{pid}"] = {
            "busy_fraction": busy_fraction(busy, window),
            "wait_ms": union_length(clip_intervals(waits, window)) / 1000.0,
            "span_counts": dict(counts)}
    return {"window_ms": (window[1] - window[0]) / 1000.0, "processes": processes}


FIXED_COLOURS = {"verify": "#2ca02c", "draft_step": "#1f77b4", "drafter_commit": "#9467bd", "wait": "#d9d9d9"}


def gantt(events: list[dict[str, Any]], path: str | Path, window_ms: float | None = 300.0) -> Path:
    """A PNG with one row per process/thread, spans coloured by name, over the middle `window_ms`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo, hi = middle_window(events, window_ms)
    names = process_names(events)
    rows: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for event in spans(events):
        if event["ts"] + event["dur"] > lo and event["ts"] < hi:
            rows[(int(event["pid"]), int(event.get("tid", 0)))].append(event)
    span_names = sorted({e["name"] for items in rows.values() for e in items})
    others = [n for n in span_names if n not in FIXED_COLOURS]
    palette = plt.get_cmap("tab20b")
    colours: dict[str, Any] = {n: matplotlib.colors.to_hex(palette(i % 20)) for i, n in enumerate(others)}
    colours.update({n: c for n, c in FIXED_COLOURS.items() if n in span_names})
    fig, ax = plt.subplots(figsize=(12, 2.2 + 0.6 * max(len(rows), 1)))
    labels = []
    for y, (key, items) in enumerate(sorted(rows.items(), key=lambda kv: (names.get(kv[0][0], ""), kv[0]))):
        labels.append(f"{names.get(key[0], key[0])}/{key[1]}")
        for e in items:
            start, end = max(e["ts"], lo), min(e["ts"] + e["dur"], hi)
            ax.broken_barh([((start - lo) / 1000, (end - start) / 1000)], (y - 0.4, 0.8), color=colours[e["name"]])
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("ms")
    ax.set_xlim(0, (hi - lo) / 1000)
    handles = [matplotlib.patches.Patch(color=colours[n], label=n) for n in span_names]
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(len(handles), 7),
                  fontsize="small", frameon=False)
    ax.set_title("Tandem timeline (drafter vs verifier)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)

"""PNG plots of the load mode's rows: tokens/s vs concurrency, and TTFT / ITL p50 vs concurrency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.bench.plots import save_figure


def plot_load(rows: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    series = by_method([r for r in rows if "error" not in r])
    return [throughput(series, out_dir / "load_throughput.png", title),
            latency(series, out_dir / "load_latency.png", title)]


def by_method(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each method's rows, by increasing concurrency."""
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["method"], []).append(row)
    return {name: sorted(points, key=lambda r: int(r["concurrency"])) for name, points in out.items()}


def throughput(series: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        ax.plot([p["concurrency"] for p in points], [p["tokens_per_s"] for p in points], marker="o",
                linestyle="--" if points[0]["kind"] == "peer" else "-", label=name)
    _concurrency_axis(ax, series)
    ax.set_ylabel("total tokens/s")
    ax.set_title(title)
    if series:
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def latency(series: dict[str, list[dict[str, Any]]], path: Path, title: str) -> Path:
    """TTFT p50 (left) and ITL p50 (right) per method, both against concurrency."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in series.items():
        style = "--" if points[0]["kind"] == "peer" else "-"
        xs = [p["concurrency"] for p in points]
        left.plot(xs, [p["ttft_ms"]["p50"] for p in points], marker="o", linestyle=style, label=name)
        right.plot(xs, [p["itl_ms"]["p50"] for p in points], marker="o", linestyle=style, label=name)
    for ax, label in ((left, "time to first token p50 (ms)"), (right, "inter-token latency p50 (ms)")):
        _concurrency_axis(ax, series)
        ax.set_ylabel(label)
    fig.suptitle(title)
    if series:
        right.legend(fontsize="small")
    return save_figure(fig, path)


def _concurrency_axis(ax: Any, series: dict[str, list[dict[str, Any]]]) -> None:
    levels = sorted({int(p["concurrency"]) for points in series.values() for p in points})
    if len(levels) > 1 and levels[-1] / levels[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrency (requests in flight)")


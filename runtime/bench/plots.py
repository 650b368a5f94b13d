"""PNG plots of a benchmark's rows: speedup bars, acceptance per depth, verifier/drafter utilisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PEER_COLOUR, TANDEM_COLOUR = "#999999", "#4477aa"


def plot_all(rows: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    ok = [r for r in rows if "error" not in r]
    return [speedup_bars(ok, out_dir / "speedup.png", title), acceptance(ok, out_dir / "acceptance.png", title),
            utilisation(ok, out_dir / "utilisation.png", title)]


def speedup_bars(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows)), 4))
    values = [r["speedup_vs_generate"] or 0.0 for r in rows]
    colours = [TANDEM_COLOUR if r["kind"] == "tandem" else PEER_COLOUR for r in rows]
    ax.bar(range(len(rows)), values, color=colours)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=45, ha="right")
    ax.set_ylabel("speedup over hf-generate (same cores)")
    ax.set_title(title)
    return save_figure(fig, path)


def acceptance(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows:
        rates = row.get("acceptance_per_depth") or []
        if rates:
            ax.plot(range(1, len(rates) + 1), rates, marker="o", label=row["method"])
    ax.set_xlabel("depth")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def utilisation(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Verifier busy fraction (its own compute time) and drafter CPU use per Tandem method."""
    import matplotlib.pyplot as plt

    tandem = [r for r in rows if r["kind"] == "tandem"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(tandem)), 4))
    xs = range(len(tandem))
    ax.bar([x - 0.2 for x in xs], [r["verifier_busy_fraction"] or 0.0 for r in tandem], 0.4,
           label="verifier busy fraction", color=TANDEM_COLOUR)
    ax.bar([x + 0.2 for x in xs], [r["cpu_util"].get("drafter", 0.0) for r in tandem], 0.4,
           label="drafter CPU (cores used)", color="#ee6677")
    ax.set_xticks(list(xs), [r["method"] for r in tandem], rotation=45, ha="right")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path

"""The benchmark's outputs: results.json, a markdown table (printed and results.md), PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLUMNS = ("method", "cores / threads", "tokens/s", "ms/token p50 (p90)", "speedup", "speedup vs 1 core", "τ",
           "verifier busy", "re-root hits", "drafter idle", "drafter steps / verif.", "peak RSS MB (c+v+d)",
           "= reference")


def fmt(value: float | None, pattern: str = "{:.2f}", suffix: str = "") -> str:
    """A number for a table cell; "—" for a missing or nan one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return pattern.format(value) + suffix


def placement_text(placement: dict[str, Any]) -> str:
    """"0,1 / 2" for a peer; "v 1 / 1 + d 0 / 1" for a deployment (cores / threads per process)."""
    def one(p: dict[str, Any]) -> str:
        cores = ",".join(str(c) for c in p.get("cores") or []) or "any"
        text = f"{cores} / {p.get('threads') or 'default'}"
        return text if p.get("device", "cpu") == "cpu" else f"{p['device']}, {text}"

    if "verifier" in placement:
        return " + ".join(f"{role[0]} {one(p)}" for role, p in placement.items())
    return one(placement)


def table_row(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"| {row['method']} | {placement_text(row['placement'])} | failed: {row['error']} |"
    lat = row["ms_per_token"]
    steps = row.get("drafter_steps_per_verification")
    if steps is None and row.get("background_steps_per_verification") is not None:
        steps_text = fmt(row["background_steps_per_verification"]) + " (bg)"
    else:
        steps_text = fmt(steps)
    rss = "+".join(f"{v:.0f}" for v in row["peak_rss_mb"].values()) or "—"
    lossless = "lossy" if row.get("lossy") else {True: "yes", False: "**no**", None: "—"}[row["lossless"]]
    cells = [row["method"], placement_text(row["placement"]), fmt(row["tokens_per_s"], "{:.1f}"),
             f"{fmt(lat['p50'], '{:.1f}')} ({fmt(lat['p90'], '{:.1f}')})",
             fmt(row["speedup_vs_generate"], suffix="x"), fmt(row["speedup_vs_generate_1core"], suffix="x"),
             fmt(row["tau"]), fmt(row["verifier_busy_fraction"]), fmt(row["reroot_hit_rate"]),
             fmt(row.get("drafter_idle_fraction")), steps_text, rss,
             lossless]
    return "| " + " | ".join(cells) + " |"


def machine_line(machine: dict[str, Any]) -> str:
    """The machine in one line: CPU, cores, GPUs, platform, torch and transformers versions."""
    gpus = ", ".join(machine.get("gpus") or []) or "no GPU"
    return (f"machine: {machine['cpu_model']}, {machine['num_cores']} cores, {gpus}; {machine['platform']}; "
            f"torch {machine['torch']}, transformers {machine['transformers']}")


def markdown(payload: dict[str, Any]) -> str:
    settings = payload["settings"]
    sampling = "greedy" if settings["temperature"] == 0 else \
        f"temperature {settings['temperature']}, seed {settings['seed']}"
    lines = [f"# {payload['label']}", "", machine_line(payload["machine"]),
             f"config {settings['config']}; {settings['num_prompts']} prompts x {settings['max_new_tokens']} new "
             f"tokens, {settings['repeats']} timed pass(es) after a warm-up; "
             f"{sampling}",
             "speedup: over hf-generate on the deployment's cores (same total cores and threads); "
             "= reference: output equals hf-generate's (greedy) or tandem-off's (sampled, same seed)", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [table_row(row) for row in payload["rows"]]
    if payload.get("notes"):
        lines += ["", *(f"note: {note}" for note in payload["notes"])]
    if payload.get("ratios"):
        lines += ["", *(f"- {key}: {value:.3f}" for key, value in payload["ratios"].items())]
    if payload.get("trace") is not None and not payload["trace"]["processes"]:
        lines += ["", "timeline: no spans were recorded (do the processes call protocol.trace?)"]
    elif payload.get("trace"):
        lines += ["", "timeline (trace.json, gantt.png): " + ", ".join(
            f"{name} busy {p['busy_fraction']:.2f}, wait {p['wait_ms']:.0f} ms"
            for name, p in payload["trace"]["processes"].items())]
    return "\n".join(lines) + "\n"


def write(payload: dict[str, Any], out_dir: Path) -> str:
    """Write results.json and results.md; return the markdown."""
    return write_files(payload, markdown(payload), out_dir, "results")


def write_files(payload: dict[str, Any], text: str, out_dir: Path, stem: str) -> str:
    """`stem`.json (the payload) and `stem`.md (`text`) in `out_dir`; returns `text`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str))
    (out_dir / f"{stem}.md").write_text(text)
    return text

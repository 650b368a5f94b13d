"""The load mode's rows (one per method x concurrency level, pure) and its files: results_load.json and a
markdown table (printed and results_load.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.bench import load_metrics as lm
from runtime.bench.load_records import LevelRun
from runtime.bench.metrics import merge_spec_stats, speedup, tokens_per_s
from runtime.bench.report import fmt, machine_line, placement_text, write_files

BASELINE = "hf-generate"


def level_row(run: LevelRun, reference: list[list[int]] | None, max_new_tokens: int) -> dict[str, Any]:
    """Everything the report shows for one method at one level, before the ratios to other rows."""
    head = {"method": run.method, "kind": run.kind, "concurrency": run.concurrency, "placement": run.placement}
    if run.error is not None:
        return {**head, "error": run.error}
    records = run.records
    lossy = run.kind == "tandem" and is_lossy(run.method)
    if lossy:  # a lossy variant's output is not compared with the reference
        reference = None
    num_tokens = sum(len(r.token_ids) for r in records)
    mismatched = None if reference is None else \
        sum(r.token_ids != reference[r.prompt_index] for r in records)
    spec = merge_spec_stats(r.stats for r in records if r.stats)
    ms = [1000.0 * s for r in records for s in lm.inter_token_s(r.chunk_s, r.chunk_tokens)]
    return {**head, "num_requests": len(records), "num_tokens": num_tokens, "wall_s": run.wall_s,
            "num_short": sum(len(r.token_ids) != max_new_tokens for r in records),
            "tokens_per_s": tokens_per_s(num_tokens, run.wall_s),
            "ttft_ms": lm.p50_p90([1000.0 * lm.first_token_s(r.chunk_s) for r in records]),
            "itl_ms": lm.p50_p90(ms),
            "tau": spec["tau"] if run.kind == "tandem" else None,
            "verifier_busy_fraction": lm.busy_fraction(run.verifier_busy_s, run.wall_s),
            "peak_rss_mb": run.peak_rss_mb,
            "num_mismatched": mismatched,
            "equals_reference": None if mismatched is None else mismatched == 0, "lossy": lossy}


def is_lossy(method: str) -> bool:
    """A Tandem variant that trades exactness for speed (tandem.VARIANTS)."""
    from runtime.bench import tandem

    _, kind = tandem.parse_method(method)
    return tandem.VARIANTS.get(kind or "", (None, {}, False))[2]


def level_rows(runs: list[LevelRun], reference: list[list[int]] | None, max_new_tokens: int) -> list[dict[str, Any]]:
    """Rows in run order, with tokens/s over hf-generate's at the same level and over the method's own at the
    lowest level."""
    rows = [level_row(run, reference, max_new_tokens) for run in runs]
    rates = {(r["method"], r["concurrency"]): r["tokens_per_s"] for r in rows if "error" not in r}
    lowest = min((r["concurrency"] for r in rows), default=1)
    for row in rows:
        if "error" not in row:
            row["vs_generate"] = speedup(row["tokens_per_s"], rates.get((BASELINE, row["concurrency"])))
            row["vs_own_lowest"] = speedup(row["tokens_per_s"], rates.get((row["method"], lowest)))
    return rows


def columns(lowest: int) -> tuple[str, ...]:
    return ("method", "c", "requests", "tokens/s", "vs hf-generate (same c)", f"vs own c={lowest}",
            "TTFT ms p50 (p90)", "ITL ms p50 (p90)", "τ", "verifier busy", "peak RSS MB", "= batch-1 generate")


def table_row(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"| {row['method']} | {row['concurrency']} | failed: {row['error']} |"
    ttft, itl = row["ttft_ms"], row["itl_ms"]
    exact = {True: "yes", None: "—"}.get(row["equals_reference"], f"no ({row['num_mismatched']} differ)")
    if row.get("lossy"):
        exact = "lossy"
    if row["equals_reference"] is False and row["kind"] == "tandem":
        exact = f"**{exact}**"
    cells = [row["method"], str(row["concurrency"]), str(row["num_requests"]), fmt(row["tokens_per_s"], "{:.1f}"),
             fmt(row["vs_generate"], suffix="x"), fmt(row["vs_own_lowest"], suffix="x"),
             f"{fmt(ttft['p50'], '{:.1f}')} ({fmt(ttft['p90'], '{:.1f}')})",
             f"{fmt(itl['p50'], '{:.2f}')} ({fmt(itl['p90'], '{:.2f}')})", fmt(row["tau"]),
             fmt(row["verifier_busy_fraction"]), rss_text(row["peak_rss_mb"]),
             exact]
    return "| " + " | ".join(cells) + " |"


def rss_text(peak_rss_mb: dict[str, float]) -> str:
    """"c 335 + v 621 + d 377" (each process's initial) or "bench 392" for one process."""
    if len(peak_rss_mb) == 1:
        return " ".join(f"{name} {mb:.0f}" for name, mb in peak_rss_mb.items())
    return " + ".join(f"{name[0]} {mb:.0f}" for name, mb in peak_rss_mb.items()) or "—"


def markdown(payload: dict[str, Any]) -> str:
    settings, rows = payload["settings"], payload["rows"]
    lowest = min(settings["concurrency"])
    sampling = "greedy" if settings["temperature"] == 0 else \
        f"temperature {settings['temperature']}, seed {settings['seed']}"
    requests = ", ".join(f"c={c}: {n}" for c, n in settings["num_requests"].items())
    header = columns(lowest)
    lines = [f"# {payload['label']}", "", machine_line(payload["machine"]),
             f"config {settings['config']}; closed loop: c requests in flight until every request of the level "
             f"was served ({requests}; {settings['num_prompts']} prompts cycled), {settings['max_new_tokens']} new "
             f"tokens each (EOS ignored), {sampling}",
             "tokens/s: all output tokens / the level's wall time; TTFT: request sent to first token; ITL: each "
             "later chunk's gap / its tokens, per token. hf-generate: left-padded batches of c, one generate call "
             "each, TTFT = prefill + first step (streamer), ITL = (total - TTFT) / (tokens - 1); hf-generate-batch: "
             "transformers' continuous batching, at most c per batch, its own per-token timestamps",
             "= batch-1 generate: every output equals batch-1 greedy hf generate on its prompt (required of "
             "Tandem; the batched peers may differ at near-ties in fp32 and are shown for information)", "",
             "placement: " + "; ".join(sorted({f"{r['method']} {placement_text(r['placement'])}" for r in rows
                                                if r["placement"]})), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [table_row(row) for row in rows]
    short = [f"{r['method']} c={r['concurrency']}" for r in rows if r.get("num_short")]
    notes = [*payload.get("notes", []),
             *([f"requests without exactly {settings['max_new_tokens']} tokens: {', '.join(short)}"] if short else [])]
    if notes:
        lines += ["", *(f"note: {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def write(payload: dict[str, Any], out_dir: Path) -> str:
    """Write results_load.json and results_load.md; return the markdown."""
    return write_files(payload, markdown(payload), out_dir, "results_load")

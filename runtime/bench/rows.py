"""One table row per method: a `MethodRun` reduced with `runtime.bench.metrics` (pure)."""

from __future__ import annotations

from typing import Any

from runtime.bench import metrics as m
from runtime.bench.records import MethodRun


def rate_of(run: MethodRun) -> float:
    """Tokens/s over all timed passes."""
    records = run.requests
    return m.tokens_per_s(sum(len(r.token_ids) for r in records), sum(r.seconds for r in records))


def best_pass_rate(run: MethodRun) -> float:
    """Tokens/s of the fastest timed pass."""
    return max((m.tokens_per_s(sum(len(r.token_ids) for r in p), sum(r.seconds for r in p)) for p in run.passes),
               default=0.0)


def method_row(run: MethodRun, base_rate: float | None, base_1core_rate: float | None,
               reference: list[list[int]] | None) -> dict[str, Any]:
    """Everything the report shows for one method. `reference`: outputs it must equal (None: no check)."""
    if run.error is not None:
        return {"method": run.name, "kind": run.kind, "placement": run.placement, "error": run.error}
    records = run.requests
    rate = rate_of(run)
    spec = m.merge_spec_stats(r.stats for r in records if r.stats)
    has_drafter = "drafter" in run.placement or run.kind == "peer"
    metrics = run.metrics if has_drafter else {k: v for k, v in run.metrics.items()
                                               if k != "reroot_hit_rate" and not k.startswith("drafter")}
    verifications = int(metrics.get("num_verifications", spec["num_verifications"]) or 0)
    drafter_steps = metrics.get("drafter_steps")
    row: dict[str, Any] = {
        "method": run.name, "kind": run.kind, "placement": run.placement,
        "num_requests": len(records), "num_tokens": sum(len(r.token_ids) for r in records),
        "tokens_per_s": rate, "tokens_per_s_best_pass": best_pass_rate(run),
        "ms_per_token": m.latency_summary([m.ms_per_token(r.seconds, len(r.token_ids)) for r in records]),
        "speedup_vs_generate": m.speedup(rate, base_rate),
        "speedup_vs_generate_1core": m.speedup(rate, base_1core_rate),
        "tau": spec["tau"] if run.kind == "tandem" else None,
        "acceptance_per_depth": spec["acceptance_per_depth"],
        "verifier_busy_fraction": metrics.get("verifier_busy_fraction"),
        "reroot_hit_rate": metrics.get("reroot_hit_rate"),
        "drafter_idle_fraction": metrics.get("drafter_idle_fraction"),
        "drafter_steps_per_verification": m.per_verification(drafter_steps, verifications),
        "background_steps_per_verification": m.per_verification(metrics.get("drafter_background_steps"),
                                                                verifications),
        "draft_tokens_per_verification": m.per_verification(metrics.get("num_draft_tokens"), verifications),
        "peak_rss_mb": run.peak_rss_mb, "cpu_util": run.cpu_util,
        "lossless": None if reference is None else run.outputs == reference,
    }
    return row


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """async / sync tokens/s per drafter (the AMUSD claim), for every drafter both ran with."""
    rates = {r["method"]: r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    out = {}
    for name, rate in rates.items():
        if name.startswith("tandem-async-"):
            drafter = name.removeprefix("tandem-async-")
            sync = rates.get(f"tandem-sync-{drafter}")
            if sync:
                out[f"async_over_sync_{drafter}"] = rate / sync
    return out

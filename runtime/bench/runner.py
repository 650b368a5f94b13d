"""Runs the selected methods one after another on the same prompts and turns them into one payload."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.bench import report, rows, tandem, trace
from runtime.bench.machine import machine_info
from runtime.bench.peers import ONE_CORE, PEERS, PeerModels, load_peer_models, run_peer
from runtime.bench.records import BenchSettings, MethodRun

log = logging.getLogger(__name__)
BASELINE = "hf-generate"
DRAFTERS = ("falcon", "model", "ngram", "useless")  # useless: the draft model with random weights


def all_methods(drafters: tuple[str, ...], peers: tuple[str, ...], one_core: bool) -> list[str]:
    """Peers (and their one-core rows), then tandem-off, then every mode x drafter."""
    names = [name for peer in peers for name in ((peer, peer + ONE_CORE) if one_core else (peer,))]
    names.append("tandem-off")
    names += [tandem.method_name(mode, kind) for kind in drafters for mode in ("sync", "async")]
    names += [tandem.method_name("async", variant) for variant, (kind, _, _) in tandem.VARIANTS.items()
              if kind is None or kind in drafters]
    return names


def select_methods(patterns: str | None, available: list[str]) -> list[str]:
    """Methods matching a comma list of names or globs (None: all), in `available` order; the baseline
    hf-generate always runs, since speedups are relative to it."""
    if patterns is None:
        return list(available)
    chosen: set[str] = {BASELINE}
    for pattern in (p.strip() for p in patterns.split(",") if p.strip()):
        matched = fnmatch.filter(available, pattern)
        if not matched:
            raise ValueError(f"--methods: {pattern!r} matches no method; known: {', '.join(available)}")
        chosen.update(matched)
    return [name for name in available if name in chosen]


@dataclass
class Plan:
    """Everything that stays fixed across methods."""

    config_path: str
    base: dict[str, Any]  # the base YAML, verifier model absolute
    drafters: dict[str, dict[str, Any]]  # drafter kind -> its section's kind-specific keys
    target_dir: str
    assistant_dir: str | None
    dtype: Any  # torch.dtype of the peers (the verifier's)
    device: str
    cores: list[int]
    one_core: list[int]
    label: str
    trace_drafter: str | None = None  # --trace: drafter of the extra async run that is traced
    trace_window_ms: float | None = 300.0  # the Gantt's window (middle of the trace); None = all of it
    before_tandem: Callable[[MethodRun], None] | None = None  # scale mode writes the oracle's references
    notes: list[str] = field(default_factory=list)


def run(plan: Plan, methods: list[str], settings: BenchSettings, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    per_method = 1 + settings.repeats * len(settings.prompts)
    runs: dict[str, MethodRun] = {}
    with tqdm(total=per_method * len(methods), file=sys.stderr, unit="req") as bar, \
            tempfile.TemporaryDirectory() as tmp:
        models = load_peer_models(plan.target_dir, plan.assistant_dir if "hf-assisted" in
                                  {m.removesuffix(ONE_CORE) for m in methods} else None, plan.dtype, plan.device)
        def tick() -> None:
            bar.update(1)

        for name in methods:
            bar.set_description(name)
            runs[name] = _run_one(plan, name, models, settings, Path(tmp), tick)
            if name == BASELINE and plan.before_tandem is not None:
                plan.before_tandem(runs[name])
        del models
        free_accelerator_memory()
        _save_raw(runs, out_dir / "raw_runs.json")
        trace_summary = None
        if plan.trace_drafter is not None:
            trace_summary = _traced_run(plan, plan.trace_drafter, settings, Path(tmp), out_dir)
    return payload(plan, settings, runs, trace_summary)


def free_accelerator_memory() -> None:
    """The peers' models are gone: give their GPU memory back before the deployments load theirs."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _save_raw(runs: dict[str, MethodRun], path: Path) -> None:
    """Every request's tokens, time and stats, before any arithmetic (so nothing measured is lost)."""
    path.write_text(json.dumps({name: dataclasses.asdict(r) for name, r in runs.items()}))


def _run_one(plan: Plan, name: str, models: PeerModels, settings: BenchSettings, tmp: Path,
             on_request: Callable[[], None]) -> MethodRun:
    if name.removesuffix(ONE_CORE) in PEERS:
        cores = plan.one_core if name.endswith(ONE_CORE) else plan.cores
        return run_peer(name, models, settings, cores, on_request)
    mode, kind = tandem.parse_method(name)
    kind, sections, _ = tandem.VARIANTS.get(kind or "", (kind, {}, False))
    drafter = tandem.drafter_section(plan.base, kind, plan.drafters[kind]) if kind else None
    path = tandem.write_variant(plan.base, tmp, name, mode, drafter, settings.max_new_tokens, sections=sections)
    try:
        return tandem.run_tandem(name, path, settings, on_request)
    except (OSError, ValueError, RuntimeError) as exc:  # TandemError included; one method's failure is a row
        log.exception("%s failed", name)
        return MethodRun(name, "tandem", {}, error=f"{type(exc).__name__}: {exc}")


def _traced_run(plan: Plan, kind: str, settings: BenchSettings, tmp: Path, out_dir: Path) -> dict[str, Any]:
    """One extra async run with timeline spans on (not a table row: tracing costs time)."""
    name = tandem.method_name("async", kind)
    path = tandem.write_variant(plan.base, tmp, f"{name}-traced", "async",
                                tandem.drafter_section(plan.base, kind, plan.drafters[kind]), settings.max_new_tokens)
    spans_dir = out_dir / "trace_spans"
    tandem.run_tandem(name, path, dataclasses.replace(settings, repeats=1), lambda: None, spans_dir)
    events = trace.merge(spans_dir, out_dir / "trace.json")
    if trace.spans(events):
        trace.gantt(events, out_dir / "gantt.png", plan.trace_window_ms)
    else:
        log.warning("no spans were recorded in %s: do the processes call protocol.trace?", spans_dir)
    return trace.summary(events, trace.middle_window(events, None))


def payload(plan: Plan, settings: BenchSettings, runs: dict[str, MethodRun],
            trace_summary: dict[str, Any] | None) -> dict[str, Any]:
    base = runs.get(BASELINE)
    base_1 = runs.get(BASELINE + ONE_CORE)
    base_rate = rows.rate_of(base) if base and not base.error else None
    base_1_rate = rows.rate_of(base_1) if base_1 and not base_1.error else None
    off = runs.get("tandem-off")
    table = []
    for method_run in runs.values():
        if settings.is_greedy:
            reference = base.outputs if base and not base.error else None
        else:  # sampled: Tandem's seeded draw gives the same tokens whatever the drafter or mode
            reference = off.outputs if off and not off.error and method_run.kind == "tandem" else None
        is_lossy = method_run.kind == "tandem" and tandem.VARIANTS.get(
            tandem.parse_method(method_run.name)[1] or "", (None, {}, False))[2]
        row = rows.method_row(method_run, base_rate, base_1_rate, None if is_lossy else reference)
        table.append({**row, "lossy": True} if is_lossy else row)
    notes = list(plan.notes)
    if base_rate and base_1_rate and base_1_rate > base_rate:
        notes.append(f"hf-generate was faster on 1 core than on {len(plan.cores)} ({base_1_rate:.1f} vs "
                     f"{base_rate:.1f} tokens/s; threads contending on a busy machine?): read the 1-core speedups too")
    return {"label": plan.label, "machine": machine_info(), "notes": notes,
            "settings": {"config": plan.config_path, "num_prompts": len(settings.prompts),
                         "max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
                         "seed": settings.seed, "repeats": settings.repeats, "device": plan.device,
                         "cores": plan.cores, "one_core": plan.one_core},
            "rows": table, "ratios": rows.ratios(table), "trace": trace_summary}


def write_outputs(result: dict[str, Any], out_dir: Path) -> str:
    from runtime.bench.plots import plot_all

    text = report.write(result, out_dir)
    plot_all(result["rows"], out_dir, result["label"])
    return text

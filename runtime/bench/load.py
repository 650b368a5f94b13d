"""The load mode (`--concurrency 1,4,16,64`): every selected method at every level, c requests in flight,
then one payload of (method x level) rows; results_load.json/.md and the load plots."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.bench import load_report, tandem
from runtime.bench.load_peers import LOAD_PEERS, references, run_continuous, run_padded
from runtime.bench.load_records import LevelRun, LoadSettings
from runtime.bench.load_tandem import run_tandem_load
from runtime.bench.machine import machine_info, pinned
from runtime.bench.peers import load_peer_models
from runtime.bench.records import MethodRun, RequestRecord
from runtime.bench.runner import Plan, free_accelerator_memory

log = logging.getLogger(__name__)


def load_methods(drafters: tuple[str, ...]) -> list[str]:
    """The peers that batch, then tandem-off, then every mode x drafter, then the async variants
    (Hidden Transfer alone or beside a drafter, target-initialised candidates)."""
    return [*LOAD_PEERS, "tandem-off",
            *(tandem.method_name(mode, kind) for kind in drafters for mode in ("sync", "async")),
            *(tandem.method_name("async", variant) for variant, (kind, _, _) in tandem.VARIANTS.items()
              if kind is None or kind in drafters)]


def run_load(plan: Plan, methods: list[str], settings: LoadSettings, out_dir: Path) -> dict[str, Any]:
    """Run every method at every level (peers first, in this process; then one deployment per Tandem method)."""
    from tqdm import tqdm

    out_dir.mkdir(parents=True, exist_ok=True)
    per_method = 1 + sum(len(settings.requests_at(c)) for c in settings.levels)
    with tqdm(total=per_method * len(methods), file=sys.stderr, unit="req") as bar, \
            tempfile.TemporaryDirectory() as tmp:
        def tick() -> None:
            bar.update(1)

        reference, runs = _run_peers(plan, [m for m in methods if m in LOAD_PEERS], settings, tick,
                                     bar.set_description)
        for name in (m for m in methods if m not in LOAD_PEERS):
            bar.set_description(name)
            runs += _run_tandem(plan, name, settings, Path(tmp), tick)
    (out_dir / "raw_load_runs.json").write_text(json.dumps([dataclasses.asdict(r) for r in runs]))
    return payload(plan, settings, runs, reference)


def _run_peers(plan: Plan, peers: list[str], settings: LoadSettings, tick: Callable[[], None],
               describe: Callable[[str], None]) -> tuple[list[list[int]] | None, list[LevelRun]]:
    """The batch-1 reference (greedy only), then each peer at every level."""
    models = load_peer_models(plan.target_dir, None, plan.dtype, plan.device)
    describe("reference")
    with pinned(plan.cores, len(plan.cores)):
        reference = references(models, settings) if settings.is_greedy else None
    if reference is not None and plan.before_tandem is not None:  # scale mode: the oracle's references
        plan.before_tandem(MethodRun("hf-generate", "peer", {}, [[RequestRecord(r, 0.0) for r in reference]]))
    runs: list[LevelRun] = []
    for name in peers:
        describe(name)
        run_peer = run_padded if name == "hf-generate" else run_continuous
        runs += run_peer(models, settings, plan.cores, tick)
    del models
    free_accelerator_memory()
    return reference, runs


def _run_tandem(plan: Plan, name: str, settings: LoadSettings, tmp: Path,
                on_request: Callable[[], None]) -> list[LevelRun]:
    mode, kind = tandem.parse_method(name)
    kind, sections, _ = tandem.VARIANTS.get(kind or "", (kind, {}, False))
    drafter = tandem.drafter_section(plan.base, kind, plan.drafters[kind]) if kind else None
    path = tandem.write_variant(plan.base, tmp, name, mode, drafter, settings.max_new_tokens,
                                concurrency=max(settings.levels), sections=sections)
    try:
        return run_tandem_load(name, path, settings, on_request)
    except (OSError, ValueError, RuntimeError) as exc:  # TandemError included; one method's failure is its rows
        log.exception("%s failed", name)
        return [LevelRun(name, "tandem", c, {}, error=f"{type(exc).__name__}: {exc}") for c in settings.levels]


def payload(plan: Plan, settings: LoadSettings, runs: list[LevelRun],
            reference: list[list[int]] | None) -> dict[str, Any]:
    num_requests = {c: len(settings.requests_at(c)) for c in settings.levels}
    notes = list(plan.notes)
    notes += [f"--num-requests {n} < concurrency {c}: at most {n} were in flight"
              for c, n in num_requests.items() if n < c]
    return {"label": f"{plan.label}: under load", "machine": machine_info(), "notes": notes,
            "settings": {"config": plan.config_path, "concurrency": settings.levels, "num_requests": num_requests,
                         "num_prompts": len(settings.prompts), "max_new_tokens": settings.max_new_tokens,
                         "temperature": settings.temperature, "seed": settings.seed, "device": plan.device,
                         "cores": plan.cores},
            "rows": load_report.level_rows(runs, reference, settings.max_new_tokens)}


def write_outputs(result: dict[str, Any], out_dir: Path) -> str:
    """results_load.json, results_load.md, load_throughput.png and load_latency.png; returns the markdown."""
    from runtime.bench.load_plots import plot_load

    text = load_report.write(result, out_dir)
    plot_load(result["rows"], out_dir, result["label"])
    return text

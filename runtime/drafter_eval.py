"""τ of a drafter on held-out prompts with the runtime's own loop (runtime.generate.speculative_generate):
tree presets, prompts cut from a corpus's held-out split, the target's own greedy outputs, and the sums over
prompts (DESIGN.md §11). Shared by scripts/eval_drafters.py and scripts/train_drafter.py.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from runtime.generate import speculative_generate
from runtime.stats import SpecStats
from runtime.stopping import StopRules
from workers.drafters.base import Drafter
from workers.target import TargetVerifier
from workers.training.corpus import read_corpus
from workers.training.dataset import document_ids
from workers.training.tokens import held_out_prompts
from workers.tree_policy import TreeConfig

# Cost shapes t(W) (root + W - 1 nodes, one row) for timing-free evaluations: "flat" = rows cost nothing (a GPU
# below its width); "demo-cpu" = the demo target's measured forward on one CPU thread (models/demo/README.md:
# 11.0, 13.0, 14.8, 15.7, 17.6, 21.4 ms at 1, 2, 4, 8, 16, 32 positions).
COST_SHAPES: dict[str, dict[int, float]] = {
    "flat": {1: 1.0, 2: 1.0},
    "demo-cpu": {1: 11.0, 2: 13.0, 4: 14.8, 8: 15.7, 16: 17.6, 32: 21.4},
}

# A static tree in the spirit of Falcon's custom-designed decoding tree: wide near the root, a long
# rank-0 spine (what a k=2 block predicts best) with a few runners-up along it. 31 nodes, depth 7.
STATIC_PATHS: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (3,),
    (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (2, 0),
    (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, 2),
    (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0), (1, 0, 0, 0),
    (0, 0, 0, 0, 0), (0, 0, 0, 0, 1), (0, 0, 0, 1, 0), (0, 0, 1, 0, 0),
    (0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 1), (0, 0, 0, 0, 1, 0), (0, 0, 0, 1, 0, 0),
    (0, 0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0, 1), (0, 0, 0, 0, 0, 1, 0),
)
TREE_PRESETS = {
    "default": TreeConfig(),
    "static": TreeConfig(static_paths=STATIC_PATHS),
    "wide": TreeConfig(total_tokens=48, depth=8, top_k=8),
    "narrow": TreeConfig(total_tokens=16, depth=6, top_k=4),
}


def parse_tree(spec: str) -> TreeConfig:
    """A preset name or TOTAL:DEPTH:TOP_K."""
    if spec in TREE_PRESETS:
        return TREE_PRESETS[spec]
    parts = spec.split(":")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"tree {spec!r} is neither a preset {sorted(TREE_PRESETS)} nor TOTAL:DEPTH:TOP_K")
    return TreeConfig(total_tokens=int(parts[0]), depth=int(parts[1]), top_k=int(parts[2]))


def load_prompts(tokenizer: Any, corpus: str, num_prompts: int, min_tokens: int, max_tokens: int,
                 seed: int) -> list[list[int]]:
    """Prompts cut from held-out documents only (chat records as their template renders them)."""
    docs = read_corpus(corpus, "held_out")
    return held_out_prompts(document_ids(tokenizer, docs), num_prompts, min_tokens, max_tokens, seed)


def reference_outputs(target: TargetVerifier, prompts: Sequence[list[int]], rules: StopRules) -> list[list[int]]:
    """The target's own greedy outputs (verifier only, one token per step)."""
    return [speculative_generate(target, None, p, rules=rules).token_ids for p in prompts]


def evaluate(target: TargetVerifier, drafter: Drafter, prompts: Sequence[list[int]], rules: StopRules,
             tree: TreeConfig, reference: Sequence[list[int]] | None = None) -> dict[str, Any]:
    """Greedy speculative generation over `prompts`; stats summed over all prompts."""
    total = SpecStats()
    num_equal, generated, start = 0, 0, time.perf_counter()
    for i, prompt in enumerate(prompts):
        result = speculative_generate(target, drafter, prompt, rules=rules, tree=tree)
        _add(total, result.stats)
        generated += len(result.token_ids)
        num_equal += int(reference is not None and result.token_ids == reference[i])
    elapsed = time.perf_counter() - start
    out = total.as_dict()
    out.update(tokens_per_s=generated / elapsed, num_prompts=len(prompts), num_generated=generated,
               lossless=num_equal / len(prompts) if reference is not None else None, elapsed_s=elapsed)
    return out


def _add(total: SpecStats, stats: SpecStats) -> None:
    total.num_verifications += stats.num_verifications
    total.num_committed += stats.num_committed
    for name in ("accepted_per_depth", "reached_per_depth"):
        mine, theirs = getattr(total, name), getattr(stats, name)
        mine.extend([0] * (len(theirs) - len(mine)))
        for d, count in enumerate(theirs):
            mine[d] += count


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| prompts | drafter | tree | τ | acceptance per depth (d1, d2, …) | verifications | tokens/s "
             "| lossless |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        acc = ", ".join(f"{a:.2f}" for a in row["acceptance_per_depth"])
        lossless = "n/a" if row["lossless"] is None else f"{row['lossless']:.0%}"
        lines.append(f"| {row.get('style', 'stdlib')} | {row['drafter']} | {row['tree']} | {row['tau']:.2f} | {acc} | "
                     f"{row['num_verifications']} | {row['tokens_per_s']:.1f} | {lossless} |")
    return "\n".join(lines)


def engine_evaluate(engine: Any, prompts: Sequence[list[int]], max_new_tokens: int,
                    reference: Sequence[list[int]] | None = None) -> dict[str, Any]:
    """Greedy generation through an in-process deployment (runtime.engine.Engine: the coordinator and the
    workers' own handlers, so the verifier's draft sources run too); stats summed over `prompts`, plus the
    verifier's counters."""
    total = SpecStats()
    num_equal, generated, start = 0, 0, time.perf_counter()
    for i, prompt in enumerate(prompts):
        out = engine.generate(prompt, max_new_tokens=max_new_tokens)
        stats = out.stats
        _add(total, SpecStats(stats["num_verifications"], stats["num_committed"], list(stats["accepted_per_depth"]),
                              list(stats["reached_per_depth"])))
        total.num_draft_tokens += stats["num_draft_tokens"]
        total.num_reroot_hits += stats["num_reroot_hits"]
        generated += len(out.token_ids)
        num_equal += int(reference is not None and out.token_ids == reference[i])
    result = total.as_dict()
    verifier = next(h for h in engine.handlers.values() if h.role == "verifier")
    result.update(num_prompts=len(prompts), num_generated=generated, elapsed_s=time.perf_counter() - start,
                  lossless=num_equal / len(prompts) if reference is not None else None,
                  verifier_counters=dict(verifier.counters))
    return result


def fix_cost(verifier: Any, shape: str) -> None:
    """Give the verifier's cost model a fixed shape (COST_SHAPES) instead of measuring it: its choices (nodes,
    Hidden Transfer slots) then depend on the shape only, never on this machine's timings (online measurements
    only scale the whole curve, which changes no choice)."""
    for width, seconds in COST_SHAPES[shape].items():
        verifier.cost.calibrate(1, width, seconds)

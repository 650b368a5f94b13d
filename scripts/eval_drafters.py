"""Evaluate drafters on held-out prompts with the runtime's own loop (runtime.generate.speculative_generate):
τ and acceptance per depth at temperature 0 (DESIGN.md §11), and whether the output equals the target's.

| flag | default | meaning |
|---|---|---|
| `--target` | `models/demo/target` | target HF checkpoint directory |
| `--falcon` | `models/demo/falcon` | Falcon drafter directory, or several comma-separated (`""` = skip) |
| `--draft` | `models/demo/draft` | AR draft model directory for `ModelDrafter` (`""` = skip) |
| `--no-ngram` | off | skip the `NgramDrafter` baseline |
| `--corpus` | `stdlib` | corpus whose held-out split gives the prompts (style `stdlib`) |
| `--styles` | `stdlib` | comma-separated prompt sets (workers/training/prompt_sets.py): `stdlib`, `handwritten`, … |
| `--num-prompts` | 20 | prompts per style, each from a different held-out document when possible |
| `--min-prompt-tokens` / `--max-prompt-tokens` | 64 / 128 | prompt length range |
| `--max-new-tokens` | 64 | tokens generated per prompt (greedy; stops early at EOS) |
| `--trees` | `default,static,wide` | tree presets (`default`, `static`, `wide`, `narrow`) or `TOTAL:DEPTH:TOP_K` |
| `--seed` | 0 | prompt selection seed |
| `--json` | none | write the results as JSON to this file |
| `--num-threads` | 2 | torch intra-op threads |

Prints a markdown table; each row sums all prompts (τ = committed tokens / verifications).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoTokenizer

from runtime.generate import speculative_generate
from runtime.stats import SpecStats
from runtime.stopping import StopRules
from workers.drafters.base import Drafter
from workers.drafters.falcon import FalconDrafter
from workers.drafters.model import ModelDrafter
from workers.drafters.ngram import NgramDrafter
from workers.target import TargetVerifier
from workers.training.corpus import read_corpus
from workers.training.dataset import document_ids
from workers.training.prompt_sets import style_prompts
from workers.training.tokens import held_out_prompts
from workers.tree_policy import TreeConfig

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


def build_drafters(args: argparse.Namespace) -> dict[str, Drafter]:
    drafters: dict[str, Drafter] = {}
    paths = [p for p in args.falcon.split(",") if p]
    for path in paths:
        drafters["falcon" if len(paths) == 1 else f"falcon {path}"] = FalconDrafter.from_pretrained(path, args.target)
    if args.draft:
        drafters["model (AR draft)"] = ModelDrafter.from_pretrained(args.draft)
    if not args.no_ngram:
        drafters["ngram"] = NgramDrafter()
    return drafters


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", default="models/demo/target", help="target HF checkpoint directory")
    parser.add_argument("--falcon", default="models/demo/falcon", help="Falcon drafter directory ('' = skip)")
    parser.add_argument("--draft", default="models/demo/draft", help="AR draft model directory ('' = skip)")
    parser.add_argument("--no-ngram", action="store_true", help="skip the ngram baseline")
    parser.add_argument("--corpus", default="stdlib", help="corpus whose held-out split gives the prompts")
    parser.add_argument("--styles", default="stdlib", help="comma-separated prompt sets (prompt_sets.STYLES)")
    parser.add_argument("--num-prompts", type=int, default=20, help="number of held-out prompts per style")
    parser.add_argument("--min-prompt-tokens", type=int, default=64, help="shortest prompt")
    parser.add_argument("--max-prompt-tokens", type=int, default=128, help="longest prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--trees", default="default,static,wide", help="comma-separated tree presets / T:D:K")
    parser.add_argument("--seed", type=int, default=0, help="prompt selection seed")
    parser.add_argument("--json", default=None, help="write results as JSON here")
    parser.add_argument("--num-threads", type=int, default=2, help="torch intra-op threads")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.num_threads)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    target = TargetVerifier.from_pretrained(args.target)
    rules = StopRules(max_new_tokens=args.max_new_tokens, stop_token_ids=frozenset({tokenizer.eos_token_id}))
    drafters = build_drafters(args)
    rows, per_style = [], {}
    for style in args.styles.split(","):
        prompts = style_prompts(style, tokenizer, args.num_prompts, args.seed, args.corpus, args.min_prompt_tokens,
                                args.max_prompt_tokens)
        start = time.perf_counter()
        reference = reference_outputs(target, prompts, rules)
        baseline_tps = sum(map(len, reference)) / (time.perf_counter() - start)
        per_style[style] = {"num_prompts": len(prompts), "autoregressive_tokens_per_s": baseline_tps}
        for name, drafter in drafters.items():
            for spec in args.trees.split(","):
                row = evaluate(target, drafter, prompts, rules, parse_tree(spec), reference)
                rows.append({"style": style, "drafter": name, "tree": spec, **row})
                print(markdown_table(rows[-1:]).splitlines()[-1], flush=True)
    counts = ", ".join(f"{style} {info['num_prompts']}" for style, info in per_style.items())
    print(f"\nheld-out prompts ({counts}), {args.max_new_tokens} new tokens, greedy\n")
    print(markdown_table(rows))
    if args.json:
        first = next(iter(per_style.values()))
        blob = {"machine": platform.platform(), "processor": platform.processor(), "num_threads": args.num_threads,
                "num_prompts": first["num_prompts"], "max_new_tokens": args.max_new_tokens,
                "autoregressive_tokens_per_s": first["autoregressive_tokens_per_s"], "styles": per_style,
                "args": vars(args), "results": rows}
        with open(args.json, "w") as handle:
            json.dump(blob, handle, indent=2)


if __name__ == "__main__":
    main()

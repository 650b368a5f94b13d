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

import torch
from transformers import AutoTokenizer

from runtime.drafter_eval import evaluate, markdown_table, parse_tree, reference_outputs
from runtime.stopping import StopRules
from workers.drafters.base import Drafter
from workers.drafters.falcon import FalconDrafter
from workers.drafters.model import ModelDrafter
from workers.drafters.ngram import NgramDrafter
from workers.target import TargetVerifier
from workers.training.prompt_sets import style_prompts


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

"""In-process sync speculative decoding vs transformers' greedy `generate`, side by side in one run.

Prints a markdown table of tokens/s, speedup over `generate` and τ per method, and writes JSON.
Example (the embedded demo models):
    python scripts/bench_inprocess.py --target models/demo/target --draft models/demo/draft \
        --falcon models/demo/falcon --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from bench_prompts import PROMPTS  # scripts/ is on sys.path when run as a script
from transformers import AutoModelForCausalLM, AutoTokenizer

from runtime.generate import speculative_generate
from runtime.stopping import StopRules
from workers.drafters.base import Drafter
from workers.drafters.falcon import FalconDrafter
from workers.drafters.model import ModelDrafter
from workers.drafters.ngram import NgramDrafter
from workers.target import TargetVerifier
from workers.tree_policy import TreeConfig


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="target HF checkpoint directory")
    parser.add_argument("--draft", help="small HF causal LM for the `model` drafter")
    parser.add_argument("--falcon", help="Falcon drafter directory")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the prompts (best kept)")
    parser.add_argument("--total-tokens", type=int, default=32)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--out", default="bench_out/inprocess.json")
    return parser.parse_args()


def time_method(run: Any, prompts: list[list[int]], repeats: int) -> tuple[float, int, list[list[int]]]:
    """Best total wall time over `repeats` passes, tokens generated, and the outputs."""
    best, outputs = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        outputs = [run(p) for p in prompts]
        best = min(best, time.perf_counter() - start)
    return best, sum(len(o) for o in outputs), outputs


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    auto: Any = AutoModelForCausalLM
    model = auto.from_pretrained(args.target, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    model.generation_config.eos_token_id = None  # both sides generate exactly max_new_tokens
    verifier = TargetVerifier(model)
    rules = StopRules(args.max_new_tokens, frozenset())
    tree = TreeConfig(total_tokens=args.total_tokens, depth=args.depth, top_k=args.top_k)
    drafters: dict[str, Drafter | None] = {"off (verifier only)": None, "ngram": NgramDrafter()}
    if args.draft:
        drafters["model"] = ModelDrafter.from_pretrained(args.draft)
    if args.falcon:
        drafters["falcon"] = FalconDrafter.from_pretrained(args.falcon, args.target)

    def hf_generate(ids: list[int]) -> list[int]:
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=args.max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id)
        return [int(t) for t in out[0, len(ids):]]

    base_s, base_tokens, reference = time_method(hf_generate, prompts, args.repeats)
    rows = [{"method": "transformers generate", "tokens_per_s": base_tokens / base_s, "speedup": 1.0,
             "tau": 1.0, "lossless": True}]
    for name, drafter in drafters.items():
        taus: list[float] = []

        def run(ids: list[int], drafter: Drafter | None = drafter, taus: list[float] = taus) -> list[int]:
            result = speculative_generate(verifier, drafter, ids, rules=rules, tree=tree)
            taus.append(result.stats.tau)
            return result.token_ids

        seconds, tokens, outputs = time_method(run, prompts, args.repeats)
        rate = tokens / seconds
        rows.append({"method": name, "tokens_per_s": rate, "speedup": rate / (base_tokens / base_s),
                     "tau": sum(taus) / len(taus), "lossless": outputs == reference})
    report(rows, args)


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU"
    print(f"machine: {machine}; target {args.target}; {args.max_new_tokens} new tokens x {len(PROMPTS)}"
          " prompts, greedy, fp32")
    print("| method | tokens/s | speedup vs generate | τ | output == generate |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['method']} | {row['tokens_per_s']:.1f} | {row['speedup']:.2f}x | {row['tau']:.2f} "
              f"| {row['lossless']} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

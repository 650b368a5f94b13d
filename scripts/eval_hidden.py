"""τ of Hidden Transfer on held-out prompts through an in-process deployment (runtime.engine.Engine): the
verifier alone, the verifier with Hidden Transfer (no drafter), a Falcon drafter, and both; greedy, each
output checked against the target's own (the `lossless` column).

| flag | default | meaning |
|---|---|---|
| `--target` | `models/demo/target` | target HF checkpoint directory |
| `--hidden` | `models/demo/hidden` | Hidden Transfer maps directory |
| `--falcon` | `models/demo/falcon` | Falcon drafter directory |
| `--arms` | `off,hidden,falcon,falcon+hidden` | deployments to run |
| `--mode` | `async` | speculation mode of the arms with a drafter (`async` or `sync`) |
| `--no-lookup` | off | turn the verifier's own prompt lookup off (`speculation.local_lookup: false`) |
| `--cost` | `demo-cpu` | the cost model's shape: `flat`, `demo-cpu` (fixed, timing-free) or `measure` (calibrated) |
| `--corpus` | `stdlib` | corpus whose held-out split gives the prompts |
| `--num-prompts` | 20 | prompts, each from a different held-out document when possible |
| `--min-prompt-tokens` / `--max-prompt-tokens` | 64 / 128 | prompt length range |
| `--max-new-tokens` | 64 | tokens generated per prompt (greedy; stops early at EOS) |
| `--tree` | `default` | tree preset (runtime/drafter_eval.py) or TOTAL:DEPTH:TOP_K |
| `--seed` | 0 | prompt selection seed |
| `--json` | none | write the results as JSON to this file |
| `--num-threads` | 1 | torch intra-op threads |
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import torch
from transformers import AutoTokenizer

from runtime.config import TandemConfig
from runtime.drafter_eval import COST_SHAPES, engine_evaluate, fix_cost, load_prompts, parse_tree, reference_outputs
from runtime.engine import Engine
from runtime.stopping import StopRules
from workers.target import TargetVerifier

ARMS = ("off", "hidden", "falcon", "falcon+hidden")


def arm_config(args: argparse.Namespace, arm: str) -> TandemConfig:
    preset = parse_tree(args.tree)
    tree = {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.init}
    verifier: dict[str, Any] = {"model": args.target, "num_threads": args.num_threads}
    if "hidden" in arm:
        verifier["hidden_transfer"] = args.hidden
    data: dict[str, Any] = {"verifier": verifier, "limits": {"max_running_per_verifier": 4},
                            "speculation": {"mode": "off" if arm == "off" else args.mode, "tree": tree,
                                            "local_lookup": not args.no_lookup}}
    if "falcon" in arm:
        data["drafter"] = {"kind": "falcon", "model": args.falcon, "num_threads": args.num_threads}
    elif arm == "hidden":
        data["speculation"]["mode"] = "async"  # no drafter: the verifier drafts by itself
    return TandemConfig.from_dict(data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", default="models/demo/target", help="target HF checkpoint directory")
    parser.add_argument("--hidden", default="models/demo/hidden", help="Hidden Transfer maps directory")
    parser.add_argument("--falcon", default="models/demo/falcon", help="Falcon drafter directory")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated deployments")
    parser.add_argument("--mode", default="async", choices=("async", "sync"), help="mode of the drafter arms")
    parser.add_argument("--no-lookup", action="store_true", help="no verifier prompt lookup")
    parser.add_argument("--cost", default="demo-cpu", choices=(*COST_SHAPES, "measure"),
                        help="cost model shape (fixed) or 'measure' (calibrated at start-up)")
    parser.add_argument("--corpus", default="stdlib", help="corpus whose held-out split gives the prompts")
    parser.add_argument("--num-prompts", type=int, default=20, help="number of held-out prompts")
    parser.add_argument("--min-prompt-tokens", type=int, default=64, help="shortest prompt")
    parser.add_argument("--max-prompt-tokens", type=int, default=128, help="longest prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="new tokens per prompt")
    parser.add_argument("--tree", default="default", help="tree preset or TOTAL:DEPTH:TOP_K")
    parser.add_argument("--seed", type=int, default=0, help="prompt selection seed")
    parser.add_argument("--json", default=None, help="write results as JSON here")
    parser.add_argument("--num-threads", type=int, default=1, help="torch intra-op threads")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.num_threads)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    prompts = load_prompts(tokenizer, args.corpus, args.num_prompts, args.min_prompt_tokens,
                           args.max_prompt_tokens, args.seed)
    rules = StopRules(max_new_tokens=args.max_new_tokens, stop_token_ids=frozenset({tokenizer.eos_token_id}))
    reference = reference_outputs(TargetVerifier.from_pretrained(args.target), prompts, rules)
    rows = []
    for arm in args.arms.split(","):
        engine = Engine.build(arm_config(args, arm), calibrate=args.cost == "measure")
        if args.cost != "measure":
            fix_cost(engine.handlers[b"verifier-0"], args.cost)
        row = {"arm": arm, **engine_evaluate(engine, prompts, args.max_new_tokens, reference)}
        rows.append(row)
        accepted = ", ".join(f"{a:.2f}" for a in row["acceptance_per_depth"])
        print(f"| {arm} | {row['tau']:.3f} | {accepted} | {row['num_verifications']} | {row['lossless']:.0%} | "
              f"{json.dumps({k: v for k, v in row['verifier_counters'].items() if 'hidden' in k})} |", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": rows}, handle, indent=2)


if __name__ == "__main__":
    main()

"""τ, speed and drift of `speculation.target_candidates` (lossy) against the exact run, on the deterministic
simulation (runtime/bench/candidates.py):

    python scripts/eval_candidates.py --widths 2,3,4 --mode async --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys

from runtime.bench.candidates import evaluate
from runtime.bench.prompts import SHIPPED_PROMPTS, load_prompts
from runtime.builders import load_tokenizer
from runtime.config import TandemConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--mode", default="async", choices=("sync", "async"))
    parser.add_argument("--widths", default="2,3,4")
    parser.add_argument("--prompts", default=str(SHIPPED_PROMPTS))
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    tokenizer = load_tokenizer(TandemConfig.load(args.config).verifier.model)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in load_prompts(args.prompts)]
    rows = evaluate(args.config, prompts, args.max_new_tokens, [int(w) for w in args.widths.split(",")], args.mode)
    exact = rows[0]
    print("| target_candidates | τ | τ vs exact | virtual tokens/s vs exact | commits off the top | outputs = greedy "
          "| tokens before the first difference | target loss (nats/token) |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for row in rows:
        tau = row.result.metrics["tau"]
        entry = {"width": row.width, "tau": tau, "tau_ratio": tau / exact.result.metrics["tau"],
                 "speed_ratio": row.result.tokens_per_s / exact.result.tokens_per_s,
                 "num_off_top": row.num_off_top, "num_verifications": row.result.metrics["num_verifications"],
                 "equal_share": row.equal_share, "tokens_before_difference": row.tokens_before_difference,
                 "loss": row.loss}
        table.append(entry)
        print(f"| {row.width or '0 (exact)'} | {tau:.2f} | {entry['tau_ratio']:.2f}x | {entry['speed_ratio']:.2f}x | "
              f"{row.num_off_top} of {entry['num_verifications']} | {row.equal_share:.0%} | "
              f"{row.tokens_before_difference:.1f} | {row.loss:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mode": args.mode, "max_new_tokens": args.max_new_tokens, "rows": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

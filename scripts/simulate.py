"""Async vs sync speculation on a virtual clock (runtime/bench/simulate.py): τ, re-root hits, drafter idle
and virtual tokens/s per mode, deterministic, with every token computed by the real models.

    python scripts/simulate.py --modes off,sync,async --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from runtime.bench.prompts import SHIPPED_PROMPTS, load_prompts
from runtime.bench.simulate import Timing, simulate
from runtime.builders import load_tokenizer
from runtime.config import TandemConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--modes", default="sync,async")
    parser.add_argument("--prompts", default=str(SHIPPED_PROMPTS))
    parser.add_argument("--num-prompts", type=int, default=0, help="0 = all")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--draft-step-ms", type=float, default=Timing.draft_step_ms)
    parser.add_argument("--hop-ms", type=float, default=Timing.hop_ms)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    config = TandemConfig.load(args.config)
    tokenizer = load_tokenizer(config.verifier.model)
    prompts = load_prompts(args.prompts)
    prompts = prompts[: args.num_prompts] if args.num_prompts else prompts
    ids = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    timing = Timing(draft_step_ms=args.draft_step_ms, hop_ms=args.hop_ms)
    rows, reference = {}, None
    for mode in args.modes.split(","):
        result = simulate(args.config, ids, args.max_new_tokens, timing, mode=mode)
        m = result.metrics
        total = sum(result.seconds)
        rows[mode] = {"tokens_per_s": result.tokens_per_s, "tau": m.get("tau"),
                      "verifier_reroot_hit_rate": m.get("reroot_hit_rate"),
                      "drafter_reroot_hit_rate": m.get("drafter_reroot_hit_rate"),
                      "drafter_idle": 1 - result.drafter_busy_s / total if result.drafter_busy_s else None,
                      "verifier_busy": result.verifier_busy_s / total}
        stats: dict[str, Any] = next((w for w in m.get("worker_stats", {}).values() if w.get("role") == "verifier"), {})
        if stats.get("num_verifications"):
            rows[mode]["nodes_per_verification"] = stats["num_nodes_verified"] / stats["num_verifications"]
        reference = reference or result.outputs
        rows[mode]["equal_to_first_mode"] = result.outputs == reference
        print(mode, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[mode].items()}),
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"timing": timing.__dict__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

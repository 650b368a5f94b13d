"""The demo: launch coordinator + verifier + drafter from configs/demo.yaml on the CPU, generate a few
completions through the Python client, then run the same prompts verifier-only and with HF `generate`,
and print τ, tokens/s and the speedups (runtime/demo.py measures; this script prints).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no weight-loading bars between the completions

from protocol.errors import ConfigError, TandemError
from runtime.config import TandemConfig
from runtime.demo import DEMO_PROMPTS, NUM_SHOWN, describe, measure_deployment, measure_generate, variant
from runtime.logs import setup_logging


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--no-generate", action="store_true", help="skip the HF generate comparison")
    args = parser.parse_args()
    setup_logging("demo", "WARNING")
    try:
        config = TandemConfig.load(args.config)
        config.check_paths()
    except ConfigError as err:
        print(f"error: {err}\n(the demo models are rebuilt by scripts/build_demo_models.sh)", file=sys.stderr)
        return 1
    print(describe(config), flush=True)
    try:
        spec = measure_deployment(args.config, DEMO_PROMPTS, args.max_new_tokens)
        for prompt, text in list(zip(DEMO_PROMPTS, spec.texts, strict=True))[:NUM_SHOWN]:
            print(f"\n--- prompt ---\n{prompt.rstrip(chr(10))}\n--- completion ({spec.mode}) ---\n{text}", flush=True)
        print(f"\n({len(DEMO_PROMPTS)} held-out prompts x {args.max_new_tokens} tokens measured, {NUM_SHOWN} shown)"
              "\nmeasuring verifier-only decoding on the same prompts...", flush=True)
        with variant(args.config, "off") as off_config:
            off = measure_deployment(off_config, DEMO_PROMPTS, args.max_new_tokens)
    except TandemError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\nspeculative ({spec.mode}): {spec.tokens_per_s:.1f} tokens/s, τ = {spec.tau:.2f} tokens per verification")
    print(f"verifier only: {off.tokens_per_s:.1f} tokens/s")
    print(f"speedup over verifier-only: {spec.tokens_per_s / off.tokens_per_s:.2f}x; "
          f"outputs identical: {spec.outputs == off.outputs}")
    if not args.no_generate:
        print("measuring HF generate on the same prompts and cores...", flush=True)
        hf = measure_generate(config, DEMO_PROMPTS, args.max_new_tokens)
        print(f"HF generate ({hf.label}): {hf.tokens_per_s:.1f} tokens/s")
        print(f"speedup: {spec.tokens_per_s / hf.tokens_per_s:.2f}x over HF generate; "
              f"outputs identical: {spec.outputs == hf.outputs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo: launch coordinator + verifier + drafter from configs/demo.yaml on the CPU, stream a few
completions through the Python client, then measure verifier-only decoding on the same prompts and
print τ, tokens/s and the speedup. Everything is shut down at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from protocol.errors import ConfigError, TandemError
from runtime.client import Client
from runtime.config import TandemConfig
from runtime.launch import Deployment, config_variant
from runtime.logs import setup_logging

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "class Stack:\n    \"\"\"A last-in first-out stack.\"\"\"\n\n    def __init__(self):\n",
    "import os\n\n\ndef list_python_files(root):\n",
]


def run(config_path: str, max_new_tokens: int, show: bool) -> tuple[float, float, list[list[int]]]:
    """(tokens/s, τ, outputs) of one deployment over the demo prompts, one request at a time."""
    with Deployment(config_path) as deployment:
        deployment.start()
        mode = deployment.config.speculation.mode
        print(f"ready ({mode}): {deployment.config.coordinator.client_address}", flush=True)
        outputs, tokens, seconds = [], 0, 0.0
        with Client(deployment.config.coordinator.client_address, timeout_s=300) as client:
            for prompt in PROMPTS:
                start = time.perf_counter()
                ids: list[int] = []
                if show:
                    print(f"\n--- prompt ---\n{prompt}--- completion ({mode}) ---")
                for chunk in client.stream(prompt, max_new_tokens=max_new_tokens):
                    ids += chunk.token_ids
                    if show:
                        print(chunk.text, end="", flush=True)
                seconds += time.perf_counter() - start
                tokens += len(ids)
                outputs.append(ids)
            tau = float(client.metrics()["tau"] or 1.0)
    return tokens / seconds, tau, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()
    setup_logging("demo", "WARNING")
    try:
        TandemConfig.load(args.config).check_paths()
    except ConfigError as err:
        print(f"error: {err}\n(the demo models are rebuilt by scripts/build_demo_models.sh)", file=sys.stderr)
        return 1
    try:
        rate, tau, outputs = run(args.config, args.max_new_tokens, show=True)
        with tempfile.TemporaryDirectory() as tmp:
            print("\n\nmeasuring verifier-only decoding on the same prompts...", flush=True)
            off_rate, _, off_outputs = run(str(config_variant(args.config, Path(tmp), "off")),
                                           args.max_new_tokens, show=False)
    except TandemError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\nspeculative: {rate:.1f} tokens/s, τ = {tau:.2f} tokens per verification")
    print(f"verifier only: {off_rate:.1f} tokens/s")
    print(f"speedup: {rate / off_rate:.2f}x; outputs identical: {outputs == off_outputs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

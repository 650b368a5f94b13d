"""The demo: launch coordinator + verifier + drafter from configs/demo.yaml on the CPU, stream a few
completions through the Python client, then measure verifier-only decoding on the same prompts and
print τ, tokens/s and the speedup. Everything is shut down at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from protocol.errors import ConfigError, TandemError
from runtime.client import Client
from runtime.config import TandemConfig
from runtime.launch import Deployment, config_variant
from runtime.logs import setup_logging

PROMPTS = [  # the demo target is small: greedy completions look like stdlib code and soon repeat
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "def read_config(path):\n    \"\"\"Read a JSON configuration file and return it as a dict.\"\"\"\n"
    "    with open(path) as f:\n",
    "import os\n\n\ndef list_python_files(root):",
]


def describe(config: TandemConfig) -> str:
    """One line per model: its shape and, for a shipped demo model, its training report's headline."""
    def read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text()) if path.is_file() else {}

    target = Path(config.verifier.model)
    shape = read(target / "config.json")
    report = read(target / "training_report.json")
    arch = shape.get("architectures", ["?"])[0]
    layers, hidden = shape.get("num_hidden_layers"), shape.get("hidden_size")
    line = f"target   {_short(target)}: {arch}, {layers} layers, hidden {hidden}"
    if report.get("held_out_loss"):
        tokens = report.get("tokens_seen_total", report["tokens_seen"])  # fine-tuned: with its pre-training
        line += (f", {report['parameters'] / 1e6:.1f} M parameters, {tokens / 1e6:.1f} M training "
                 f"tokens, held-out loss {report['held_out_loss']:.2f} nats/token")
    lines = [line]
    if config.drafter is not None:
        drafter = Path(config.drafter.model) if config.drafter.model else None
        falcon = read(drafter / "falcon_config.json") if drafter else {}
        what = (f"Falcon, {falcon['num_layers']} layers, k = {falcon['block_size']} tokens per forward"
                if falcon else config.drafter.kind)
        lines.append(f"drafter  {_short(drafter) if drafter else config.drafter.kind}: {what}")
    return "\n".join(lines)


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


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
                    print(f"\n--- prompt ---\n{prompt.rstrip(chr(10))}\n--- completion ({mode}) ---")
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
        config = TandemConfig.load(args.config)
        config.check_paths()
    except ConfigError as err:
        print(f"error: {err}\n(the demo models are rebuilt by scripts/build_demo_models.sh)", file=sys.stderr)
        return 1
    print(describe(config), flush=True)
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

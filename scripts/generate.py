"""Submit a prompt to a running deployment and stream the answer.

    python scripts/generate.py --config configs/demo.yaml "def fibonacci(n):" --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import sys

from protocol.errors import TandemError
from runtime.client import Client
from runtime.config import TandemConfig
from runtime.results import GenerationParams


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--config", help="deployment YAML (for the coordinator's client address)")
    parser.add_argument("--address", help="coordinator client address, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args()
    address = args.address or (TandemConfig.load(args.config).coordinator.client_address if args.config else None)
    if address is None:
        parser.error("give --config or --address")
    try:
        with Client(address, timeout_s=args.timeout_s) as client:
            params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                      top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
            for chunk in client.stream(args.prompt, params):
                print(chunk.text, end="", flush=True)
                if chunk.finish_reason is not None:
                    print(f"\n[finish: {chunk.finish_reason}] {json.dumps(chunk.stats)}", file=sys.stderr)
    except TandemError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

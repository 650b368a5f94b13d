"""Submit a prompt to a running deployment and stream the answer, or run the same pipeline in-process.

    python scripts/generate.py --config configs/demo.yaml "def fibonacci(n):" --max-new-tokens 64
    python scripts/generate.py --config configs/demo.yaml --local "def fibonacci(n):"   # no deployment needed

Without `--local`, a coordinator must answer at the address within `--probe-timeout-s` (default 5 s);
otherwise it says so at once, with how to start one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from protocol.errors import TandemError
from protocol.messages import Chunk
from runtime.client import PROBE_TIMEOUT_S, Client, probe
from runtime.config import DEFAULT_CONFIG_PATH, TandemConfig
from runtime.results import GenerationParams
from runtime.security import client_keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt")
    parser.add_argument("--config", help="deployment YAML (for the coordinator's client address, or --local)")
    parser.add_argument("--address", help="coordinator client address, e.g. tcp://127.0.0.1:5555")
    parser.add_argument("--local", action="store_true",
                        help="run coordinator, verifier and drafter in this process (runtime.engine.Engine)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("--probe-timeout-s", type=float, default=PROBE_TIMEOUT_S,
                        help="how long a coordinator has to answer before the command gives up with a hint")
    args = parser.parse_args()
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    try:
        if args.local:
            return _print(_local(args.config or str(DEFAULT_CONFIG_PATH), args.prompt, params))
        if args.address is None and args.config is None:
            parser.error("give --config or --address (or --local)")
        config = TandemConfig.load(args.config) if args.address is None else None
        address = args.address or config.coordinator.client_address  # type: ignore[union-attr]
        keys = client_keys(config.security) if config is not None else None
        probe(address, keys, args.probe_timeout_s)
        with Client(address, timeout_s=args.timeout_s, curve=keys) as client:
            return _print(client.stream(args.prompt, params))
    except TandemError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _local(config_path: str, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
    from runtime.engine import Engine  # loads torch and the models: only for --local

    print(f"running {config_path} in-process (loading the models) ...", file=sys.stderr)
    yield from Engine.from_config(config_path).stream(prompt, params)


def _print(chunks: Iterator[Chunk]) -> int:
    for chunk in chunks:
        print(chunk.text, end="", flush=True)
        if chunk.finish_reason is not None:
            print(f"\n[finish: {chunk.finish_reason}] {json.dumps(chunk.stats)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

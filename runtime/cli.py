"""The `tandem` command: one entry point over the scripts in `scripts/`.

    tandem launch --config configs/demo.yaml --set server.port=8001   # whole deployment (+ HTTP server)
    tandem serve --config deploy.yaml        # only the HTTP server, for a running coordinator
    tandem generate "def fib(n):" --max-new-tokens 32
    tandem coordinator | worker --role verifier | bench | train-drafter ...

Every subcommand takes `--config` and repeatable `--set dotted.key=value`. Overrides are validated
exactly as YAML keys (an unknown key is an error naming it); with overrides, the effective YAML is
written to a temporary file that the script and every process it starts read. Other arguments go to
the script unchanged (`tandem launch --help` shows the script's own help).
"""

from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol.errors import ConfigError
from runtime.config import DEFAULT_CONFIG_PATH, TandemConfig
from runtime.config_overrides import write_effective

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@dataclass(frozen=True)
class Command:
    script: str
    help: str
    needs_config: bool = True  # False: --config is passed on only when given


COMMANDS = {
    "serve": Command("serve.py", "OpenAI-compatible HTTP server for a running coordinator"),
    "launch": Command("launch.py", "coordinator, workers (and the HTTP server when the YAML has server:)"),
    "generate": Command("generate.py", "stream one completion from a running deployment"),
    "coordinator": Command("coordinator.py", "the coordinator process alone"),
    "worker": Command("worker.py", "one worker process (--role verifier|drafter)"),
    "bench": Command("bench.py", "benchmark a deployment", needs_config=False),
    "train-drafter": Command("train_drafter.py", "train a Falcon drafter for the config's target",
                             needs_config=False),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, add_help=False)  # -h goes to the script
        sub.add_argument("--config", default=None, help=f"deployment YAML (default {DEFAULT_CONFIG_PATH.name})")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    command = COMMANDS[args.command]
    config_path = args.config or (str(DEFAULT_CONFIG_PATH) if command.needs_config or args.overrides else None)
    with tempfile.TemporaryDirectory(prefix="tandem-") as tmp:
        if config_path is not None:
            try:
                config = TandemConfig.load(config_path, args.overrides)
                if args.overrides:
                    config_path = str(write_effective(config_path, args.overrides, Path(tmp) / "config.yaml"))
            except ConfigError as err:
                print(f"tandem {args.command}: error: {err}", file=sys.stderr)
                return 2
            rest = _config_arguments(args.command, config, config_path, rest)
        return run_script(SCRIPTS / command.script, rest)


def _config_arguments(name: str, config: TandemConfig, config_path: str, rest: list[str]) -> list[str]:
    """The script's arguments with the config: `--config`, or for train-drafter the target and output."""
    if name != "train-drafter":
        return ["--config", config_path, *rest]
    extra = [] if "--target" in rest else ["--target", config.verifier.model]
    drafter = config.drafter
    if "--out" not in rest and drafter is not None and drafter.kind == "falcon" and drafter.model is not None:
        extra += ["--out", drafter.model]
    return [*extra, *rest]


def run_script(path: Path, args: Sequence[str]) -> int:
    """Run a script as `python path args...` would, in this process; its exit status is returned."""
    if not path.is_file():
        print(f"tandem: error: {path} does not exist", file=sys.stderr)
        return 2
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.parent))  # as for a script: its siblings import each other
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`--set key=value` overrides of a deployment YAML, and the effective YAML written out for child processes.

An override is a dotted key and a YAML value (`limits.max_queued_requests=1`, `speculation.mode=off`,
`server.api_keys=[k1, k2]`). It is applied to the parsed YAML before validation, so an unknown or
misspelt key is the same ConfigError naming the dotted key that the YAML file would give.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from protocol.errors import ConfigError


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], the YAML value)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(part.strip() for part in parts):
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. limits.max_queued_requests=8")
    try:
        return [part.strip() for part in parts], yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML: {exc}") from exc


def apply_overrides(data: object, overrides: Sequence[str]) -> Any:
    """A copy of parsed YAML with every override set; missing sections are created."""
    result = copy.deepcopy(data) if data is not None else {}
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node, dict):
                break
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[:depth + 1])} is a value, not a section")
        if not isinstance(node, dict):
            raise ConfigError(f"--set {text!r}: the config is not a mapping")
        node[keys[-1]] = value
    return result


def write_effective(path: str | os.PathLike[str], overrides: Sequence[str], out_path: Path) -> Path:
    """The YAML at `path` with `overrides` applied and paths made absolute, for child processes to load."""
    from runtime.config import TandemConfig

    config = TandemConfig.load(path, overrides)  # validates, and resolves relative paths
    data = apply_overrides(yaml.safe_load(Path(path).read_text(encoding="utf-8")), overrides)
    data["verifier"]["model"] = config.verifier.model
    if config.verifier.hidden_transfer is not None:
        data["verifier"]["hidden_transfer"] = config.verifier.hidden_transfer
    if config.drafter is not None and config.drafter.model is not None:
        data["drafter"]["model"] = config.drafter.model
    if config.server is not None and config.server.chat_template is not None:
        data["server"]["chat_template"] = config.server.chat_template
    out_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return out_path


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """`--config PATH` and repeatable `--set dotted.key=value` on a command's parser."""
    parser.add_argument("--config", default=default, required=default is None, help="deployment YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one YAML key, e.g. --set limits.max_queued_requests=8 (repeatable)")

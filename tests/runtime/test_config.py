"""Deployment YAML loading and validation: keys, values, paths; no model is loaded."""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from protocol.errors import ConfigError
from runtime.config import REPO_ROOT, LimitsConfig, TandemConfig, VerifierConfig, resolve_model_path, validate_address

CONFIG_FILES = sorted((REPO_ROOT / "configs").glob("*.yaml"))

BASE: dict[str, Any] = {
    "coordinator": {"client_address": "tcp://127.0.0.1:5555", "worker_address": "tcp://127.0.0.1:5556"},
    "verifier": {"model": "models/demo/target", "device": "cpu", "cpu_affinity": [1], "num_threads": 1},
    "drafter": {"kind": "falcon", "model": "models/demo/falcon", "cpu_affinity": [0], "num_threads": 1},
    "speculation": {"mode": "async", "tree": {"total_tokens": 32, "depth": 6, "top_k": 8}},
    "limits": {"max_new_tokens": 1024},
}


def _with(dotted: str, value: Any) -> dict[str, Any]:
    """BASE with one dotted key set (or removed when value is `_DELETE`)."""
    data = copy.deepcopy(BASE)
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return data


_DELETE = object()


def _write(tmp_path: Path, data: object, name: str = "deploy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _load_error(tmp_path: Path, data: object) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        TandemConfig.load(path)
    message = str(info.value)
    assert str(path) in message  # every loading error names the file
    return message


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = TandemConfig.load(path)
    assert Path(config.verifier.model).is_absolute()
    if config.verifier.hidden_transfer is not None and config.drafter is None:  # the verifier drafts alone
        assert Path(config.verifier.hidden_transfer).is_absolute() and not config.uses_drafter
        return
    assert config.drafter is not None and config.drafter.model is not None
    assert Path(config.drafter.model).is_absolute()
    assert config.uses_drafter


def test_shipped_layouts() -> None:
    assert {p.name for p in CONFIG_FILES} >= {"cpu.yaml", "demo.yaml", "two_gpu.yaml"}
    cpu = TandemConfig.load(REPO_ROOT / "configs" / "cpu.yaml")
    assert cpu.drafter is not None
    assert (cpu.verifier.cpu_affinity, cpu.drafter.cpu_affinity) == ((1,), (0,))
    assert cpu.verifier.model == str(REPO_ROOT / "models" / "demo" / "target")
    gpu = TandemConfig.load(REPO_ROOT / "configs" / "two_gpu.yaml")
    assert gpu.drafter is not None
    assert (gpu.verifier.device, gpu.drafter.device, gpu.verifier.dtype) == ("cuda:0", "cuda:1", "bfloat16")
    assert gpu.verifier.num_threads is None and gpu.drafter.cpu_affinity is None
    one_gpu = TandemConfig.load(REPO_ROOT / "configs" / "one_gpu.yaml")
    assert one_gpu.drafter is not None and (one_gpu.verifier.device, one_gpu.drafter.device) == ("cuda:0", "cuda:0")
    demo = TandemConfig.default()
    assert demo.speculation.mode == "async" and demo.speculation.tree.total_tokens == 32


@pytest.mark.parametrize("dotted", ["devce", "verifier.devce", "speculation.tree.dpeth", "limits.max_tokens"])
def test_unknown_key_names_key_and_file(tmp_path: Path, dotted: str) -> None:
    message = _load_error(tmp_path, _with(dotted, 1))
    assert f"unknown key {dotted}" in message


def test_unknown_key_suggests_close_match(tmp_path: Path) -> None:
    assert "did you mean verifier.device?" in _load_error(tmp_path, _with("verifier.devce", "cpu"))


@pytest.mark.parametrize("dotted", ["verifier", "verifier.model", "drafter"])
def test_missing_required_key(tmp_path: Path, dotted: str) -> None:
    assert f"missing required key {dotted}" in _load_error(tmp_path, _with(dotted, _DELETE))


BAD_VALUES = [
    ("coordinator.client_address", "127.0.0.1:5555"),
    ("coordinator.client_address", "tcp://127.0.0.1:0"),
    ("coordinator.worker_address", "tcp://127.0.0.1:70000"),
    ("coordinator.worker_address", "tcp://127.0.0.1:5555"),  # same as client_address
    ("coordinator.heartbeat_interval_s", 0),
    ("coordinator.heartbeat_interval_s", "fast"),
    ("coordinator.worker_timeout_s", 0.25),  # not above the heartbeat interval
    ("coordinator.log_level", "LOUD"),
    ("verifier.model", ""),
    ("verifier.model", 7),
    ("verifier.dtype", "fp32"),
    ("verifier.device", "gpu"),
    ("verifier.device", "cuda:x"),
    ("verifier.cpu_affinity", [-1]),
    ("verifier.cpu_affinity", [0, 0]),
    ("verifier.cpu_affinity", 1),
    ("verifier.num_threads", 0),
    ("verifier.num_threads", 1.5),
    ("verifier.attn_implementation", "flash"),
    ("verifier.max_length", 0),
    ("verifier.max_batch", "16"),
    ("verifier.prefill_chunk", 0),
    ("verifier.compile", "yes"),
    ("verifier.borrow_drafter_cores", 1),
    ("drafter.kind", "medusa"),
    ("drafter.dtype", "int8"),
    ("drafter.device", "tpu"),
    ("drafter.cpu_affinity", ["a"]),
    ("drafter.num_threads", True),
    ("drafter.attn_implementation", None),
    ("drafter.max_ngram", 0),
    ("drafter.min_ngram", "1"),
    ("speculation.mode", "fast"),
    ("speculation.disable_at_requests", -1),
    ("speculation.disable_at_requests", "4"),
    ("speculation.tree.total_tokens", 0),
    ("speculation.tree.depth", -1),
    ("speculation.tree.top_k", "8"),
    ("speculation.tree.max_living_nodes", -1),
    ("speculation.tree.prune_living", "yes"),
    ("speculation.tree.static_paths", [[0, 1]]),  # parent path [0] missing
    ("speculation.tree.static_paths", [0, 1]),
    ("limits.max_prompt_tokens", 0),
    ("limits.max_new_tokens", "12"),
    ("limits.default_max_new_tokens", 2048),  # above max_new_tokens
    ("limits.max_queued_requests", 0),
    ("limits.request_timeout_s", -1),
    ("limits.max_message_bytes", 10),
]


@pytest.mark.parametrize(("dotted", "value"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v in BAD_VALUES])
def test_bad_value_names_key(tmp_path: Path, dotted: str, value: Any) -> None:
    message = _load_error(tmp_path, _with(dotted, value))
    assert dotted in message
    shown = [value, *value] if isinstance(value, list) else [value]  # the value, or its bad entry
    assert any(repr(v) in message for v in shown)


def test_wrong_type_message_is_exact() -> None:
    with pytest.raises(ConfigError) as info:
        TandemConfig.from_dict(_with("limits.max_new_tokens", "12"), source="x.yaml")
    assert str(info.value) == "x.yaml: limits.max_new_tokens must be an integer, got '12'"


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    assert "verifier must be a mapping" in _load_error(tmp_path, _with("verifier", ["model"]))
    assert "the config must be a mapping" in _load_error(tmp_path, ["verifier"])


def test_unreadable_and_invalid_yaml_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        TandemConfig.load(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("verifier: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        TandemConfig.load(broken)
    assert str(broken) in str(info.value)


def test_ngram_drafter_needs_no_model_and_refuses_one(tmp_path: Path) -> None:
    ngram = {"kind": "ngram", "max_ngram": 4, "min_ngram": 2}
    config = TandemConfig.from_dict(_with("drafter", ngram))
    assert config.drafter is not None and config.drafter.model is None and config.drafter.max_ngram == 4
    message = _load_error(tmp_path, _with("drafter", {**ngram, "model": "models/demo/draft"}))
    assert "drafter.model must be absent or null for kind 'ngram'" in message
    assert "drafter.min_ngram" in _load_error(tmp_path, _with("drafter", {"kind": "ngram", "min_ngram": 4}))


@pytest.mark.parametrize("kind", ["falcon", "model"])
def test_model_drafters_require_a_model(tmp_path: Path, kind: str) -> None:
    message = _load_error(tmp_path, _with("drafter", {"kind": kind}))
    assert f"drafter.model is required for kind '{kind}'" in message


def test_mode_off_runs_without_drafter() -> None:
    config = TandemConfig.from_dict(_with("drafter", _DELETE) | {"speculation": {"mode": "off"}})
    assert config.drafter is None and not config.uses_drafter
    with pytest.raises(ConfigError, match="drafter"):
        config.worker("drafter")
    kept = TandemConfig.from_dict(_with("speculation.mode", "off"))
    assert kept.drafter is not None and not kept.uses_drafter  # allowed, but not used


def test_tree_goes_through_tree_config() -> None:
    paths = [[0], [1], [0, 0], [0, 0, 2]]
    config = TandemConfig.from_dict(_with("speculation.tree", {"static_paths": paths, "max_living_nodes": 64}))
    tree = config.speculation.tree
    assert tree.static_paths == ((0,), (1,), (0, 0), (0, 0, 2))
    assert (tree.total_tokens, tree.depth, tree.top_k, tree.living_cap) == (4, 3, 3, 64)
    with pytest.raises(ConfigError, match=r"^<string>: speculation\.tree\.top_k must be a positive integer, got 0$"):
        TandemConfig.from_dict(_with("speculation.tree.top_k", 0))


def test_defaults_fill_omitted_sections() -> None:
    config = TandemConfig.from_dict({"verifier": {"model": "m"}, "drafter": {"kind": "ngram"}})
    assert config.coordinator.client_address == "tcp://127.0.0.1:5555"
    assert config.speculation.mode == "async" and config.speculation.tree.depth == 6
    assert config.limits.max_message_bytes == 64 * 1024 * 1024
    assert config.limits.resolved_default_max_new_tokens == 128
    assert LimitsConfig(max_new_tokens=64).resolved_default_max_new_tokens == 64
    assert LimitsConfig(default_max_new_tokens=16).resolved_default_max_new_tokens == 16
    assert isinstance(config.limits.request_timeout_s, float)


def test_relative_paths_resolve_as_documented(tmp_path: Path) -> None:
    (tmp_path / "beside").mkdir()
    in_repo = "protocol"  # a directory that exists at the repository root
    config = TandemConfig.load(_write(tmp_path, _with("verifier.model", in_repo) | {
        "drafter": {"kind": "model", "model": "beside"}}))
    assert config.verifier.model == str(REPO_ROOT / "protocol")  # repository root first
    assert config.drafter is not None and config.drafter.model == str(tmp_path / "beside")  # then YAML's dir
    # Neither exists: next to a YAML outside the repository, under the root for one inside it (or none).
    assert resolve_model_path("not/yet", tmp_path) == str(tmp_path / "not" / "yet")
    assert resolve_model_path("not/yet", REPO_ROOT / "configs") == str(REPO_ROOT / "not" / "yet")
    assert resolve_model_path("not/yet", None) == str(REPO_ROOT / "not" / "yet")
    assert resolve_model_path(str(tmp_path / "a" / ".." / "b"), None) == str(tmp_path / "b")
    assert resolve_model_path("~/m", None) == os.path.expanduser("~/m")


def test_check_paths_reports_missing_model_dirs(tmp_path: Path) -> None:
    config = TandemConfig.load(_write(tmp_path, _with("verifier.model", "no_such_target")))
    with pytest.raises(ConfigError) as info:
        config.check_paths()
    message = str(info.value)
    assert "verifier.model" in message and str(tmp_path / "no_such_target") in message
    assert str(tmp_path / "deploy.yaml") in message
    (tmp_path / "t").mkdir()
    (tmp_path / "f").mkdir()
    ok = TandemConfig.from_dict(_with("verifier.model", str(tmp_path / "t")) | {
        "drafter": {"model": str(tmp_path / "f")}})
    ok.check_paths()  # both exist: no error


def test_configs_are_frozen_and_replace_revalidates() -> None:
    config = TandemConfig.from_dict(BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.verifier.device = "cuda:0"  # type: ignore[misc]
    moved = dataclasses.replace(config, verifier=dataclasses.replace(config.verifier, device="cuda:1"))
    assert moved.verifier.device == "cuda:1" and config.verifier.device == "cpu"
    with pytest.raises(ConfigError, match=r"verifier\.num_threads"):
        dataclasses.replace(config.verifier, num_threads=0)
    with pytest.raises(ConfigError, match="drafter"):
        dataclasses.replace(config, drafter=None)  # mode is async
    assert config.worker("verifier") is config.verifier


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:1", "tcp://*:65535", "tcp://[::1]:5555",
                                     "tcp://host.example:80", "ipc:///tmp/tandem.sock", "inproc://workers"])
def test_valid_addresses(address: str) -> None:
    assert validate_address(address) == address


@pytest.mark.parametrize("address", ["tcp://127.0.0.1", "tcp://:5555", "tcp://h:65536", "udp://h:1", "ipc://",
                                     "inproc:// ", 5555])
def test_invalid_addresses(address: object) -> None:
    with pytest.raises(ConfigError, match="client_address"):
        validate_address(address, "coordinator.client_address")


def test_torch_dtype_property() -> None:
    assert VerifierConfig(model="m", dtype="bfloat16").torch_dtype is torch.bfloat16
    assert VerifierConfig(model="m").torch_dtype is torch.float32


def test_importing_config_does_not_import_torch() -> None:
    code = "import runtime.config, sys; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_bare_off_in_yaml_means_mode_off(tmp_path: Path) -> None:
    path = tmp_path / "off.yaml"
    path.write_text("verifier: {model: /nowhere}\nspeculation: {mode: off}\n")  # YAML 1.1: off -> False
    assert TandemConfig.load(path).speculation.mode == "off"

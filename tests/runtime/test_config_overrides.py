"""`--set` overrides and the `server:` section: validated exactly like YAML keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from protocol.errors import ConfigError
from runtime.config import DEFAULT_CONFIG_PATH, REPO_ROOT, TandemConfig
from runtime.config_overrides import apply_overrides, parse_override, write_effective


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("limits.max_queued_requests=8") == (["limits", "max_queued_requests"], 8)
    assert parse_override("server.api_keys=[a, b]") == (["server", "api_keys"], ["a", "b"])
    assert parse_override("coordinator.client_address=tcp://h:1") == (["coordinator", "client_address"], "tcp://h:1")
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_override("limits.max_queued_requests")
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        parse_override("limits..x=1")


def test_apply_overrides_creates_sections_and_leaves_the_input_alone() -> None:
    data = {"limits": {"max_new_tokens": 5}}
    out = apply_overrides(data, ["limits.max_new_tokens=7", "server.port=9000"])
    assert out == {"limits": {"max_new_tokens": 7}, "server": {"port": 9000}}
    assert data == {"limits": {"max_new_tokens": 5}}
    with pytest.raises(ConfigError, match=r"verifier\.model is a value"):
        apply_overrides({"verifier": {"model": "x"}}, ["verifier.model.y=1"])


def test_load_with_overrides_validates_like_yaml() -> None:
    config = TandemConfig.load(DEFAULT_CONFIG_PATH, ["speculation.mode=off", "limits.max_queued_requests=1"])
    assert config.speculation.mode == "off" and config.limits.max_queued_requests == 1
    with pytest.raises(ConfigError, match=r"unknown key limits\.max_queud_requests \(did you mean"):
        TandemConfig.load(DEFAULT_CONFIG_PATH, ["limits.max_queud_requests=1"])
    with pytest.raises(ConfigError, match="unknown key bogus"):
        TandemConfig.load(DEFAULT_CONFIG_PATH, ["bogus.key=1"])
    with pytest.raises(ConfigError, match=r"limits\.max_new_tokens must be an integer"):
        TandemConfig.load(DEFAULT_CONFIG_PATH, ["limits.max_new_tokens=lots"])


def test_server_section_defaults_and_validation() -> None:
    config = TandemConfig.load(DEFAULT_CONFIG_PATH, ["server.port=8123"])
    assert config.server is not None
    assert (config.server.host, config.server.api_keys, config.server.base_url) == \
        ("127.0.0.1", (), "http://127.0.0.1:8123")
    assert TandemConfig.load(DEFAULT_CONFIG_PATH, ["server="]).server is None
    for override, key in (("server.port=70000", "server.port"), ("server.api_keys=secret", "server.api_keys"),
                          ("server.host=''", "server.host"), ("server.colour=1", "server.colour")):
        with pytest.raises(ConfigError, match=key):
            TandemConfig.load(DEFAULT_CONFIG_PATH, [override])


def test_chat_template_path_resolves_like_model_paths() -> None:
    config = TandemConfig.load(DEFAULT_CONFIG_PATH, ["server.chat_template=configs/chat_template.jinja"])
    assert config.server is not None and config.server.chat_template == str(REPO_ROOT / "configs/chat_template.jinja")
    inline = TandemConfig.load(DEFAULT_CONFIG_PATH, ["server.chat_template='{{ messages[0].content }}'"])
    assert inline.server is not None and inline.server.chat_template == "{{ messages[0].content }}"


def test_write_effective_gives_child_processes_the_same_config(tmp_path: Path) -> None:
    out = write_effective(DEFAULT_CONFIG_PATH, ["limits.max_new_tokens=9", "server.port=8124"],
                          tmp_path / "effective.yaml")
    assert yaml.safe_load(out.read_text())["limits"]["max_new_tokens"] == 9
    again = TandemConfig.load(out)  # from another directory: model paths were made absolute
    original = TandemConfig.load(DEFAULT_CONFIG_PATH, ["limits.max_new_tokens=9", "server.port=8124"])
    assert again == original

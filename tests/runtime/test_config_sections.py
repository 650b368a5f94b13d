"""The `supervision` and `security` sections: defaults, validation naming the key, key paths resolved."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.errors import ConfigError
from runtime.config import TandemConfig
from runtime.config_schema import SecurityConfig, SupervisionConfig

BASE = {"verifier": {"model": "models/demo/target"}, "speculation": {"mode": "off"}}


def test_defaults_keep_loopback_and_no_curve() -> None:
    config = TandemConfig.from_dict(BASE)
    assert config.supervision == SupervisionConfig() and config.supervision.restart
    assert not config.security.curve
    assert "127.0.0.1" in config.coordinator.client_address and "127.0.0.1" in config.coordinator.worker_address


@pytest.mark.parametrize("section,values,key", [
    ("supervision", {"initial_backoff_s": 0}, "supervision.initial_backoff_s"),
    ("supervision", {"max_restarts": -1}, "supervision.max_restarts"),
    ("supervision", {"initial_backoff_s": 5, "max_backoff_s": 1}, "supervision.max_backoff_s"),
    ("supervision", {"restart": "yes"}, "supervision.restart"),
    ("supervision", {"restarts": 3}, "supervision.restarts"),
    ("security", {"curve": 1}, "security.curve"),
    ("security", {"client_keys_dir": ""}, "security.client_keys_dir"),
])
def test_bad_values_name_the_key(section: str, values: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        TandemConfig.from_dict({**BASE, section: values})


def test_key_paths_resolve_against_the_yaml_folder(tmp_path: Path) -> None:
    config = TandemConfig.from_dict({**BASE, "security": {"curve": True, "client_keys_dir": "keys/clients"}},
                                    base_dir=tmp_path)
    assert config.security.client_keys_dir == str(tmp_path / "keys" / "clients")
    with pytest.raises(ConfigError, match=r"security\.server_secret_key_file is required"):
        config.security.require("server_secret_key_file", "client_keys_dir")
    assert SecurityConfig().require() == []

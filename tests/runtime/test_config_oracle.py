"""The benchmark-only `oracle` drafter kind in a deployment YAML, and building it from the config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import ConfigError
from runtime.builders import build_drafter
from runtime.config import TandemConfig
from workers.drafters.oracle import OracleDrafter


def _config(**drafter: Any) -> dict[str, Any]:
    return {"verifier": {"model": "models/demo/target"},
            "drafter": {"kind": "oracle", "oracle_reference": "/tmp/ref.json", **drafter}}


def test_oracle_section_loads_with_its_keys() -> None:
    config = TandemConfig.from_dict(_config(oracle_accept_prob=0.5, oracle_step_ms=2, oracle_seed=4))
    assert config.drafter is not None
    assert (config.drafter.kind, config.drafter.model) == ("oracle", None)
    assert (config.drafter.oracle_accept_prob, config.drafter.oracle_step_ms, config.drafter.oracle_seed) == \
        (0.5, 2, 4)


@pytest.mark.parametrize(("key", "value"), [("oracle_accept_prob", 1.5), ("oracle_accept_prob", "high"),
                                            ("oracle_step_ms", -1), ("oracle_seed", -2),
                                            ("oracle_reference", None), ("model", "models/demo/draft")])
def test_bad_oracle_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"drafter.{key}"):
        TandemConfig.from_dict(_config(**{key: value}))


def test_build_drafter_reads_the_reference_and_the_targets_vocabulary(tmp_path: Path) -> None:
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps([[1, 2, 3, 4]]))
    config = TandemConfig.from_dict(_config(oracle_reference=str(reference), oracle_accept_prob=1.0))
    assert config.drafter is not None
    drafter, vocab_size, hidden_size = build_drafter(config.drafter, config.verifier.model)
    assert isinstance(drafter, OracleDrafter)
    target_vocab = json.loads((Path(config.verifier.model) / "config.json").read_text())["vocab_size"]
    assert (drafter.vocab_size, drafter.references, vocab_size, hidden_size) == (target_vocab, [[1, 2, 3, 4]], 0, 0)

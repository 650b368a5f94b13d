"""The shipped Hidden Transfer maps (models/demo/hidden) load for the demo target, and a deployment that uses
them (alone, and beside the Falcon drafter) decodes a held-out prompt exactly as the target does, committing
more than one token per verification with their guesses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime.config import TandemConfig
from runtime.drafter_eval import fix_cost
from runtime.engine import Engine
from tests.workers.training.test_shipped_models import DEMO, NEW_TOKENS, prompt, reference, target, tokenizer
from workers.hidden_transfer import TransferMaps
from workers.target import TargetVerifier

__all__ = ["prompt", "reference", "target", "tokenizer"]  # fixtures shared with test_shipped_models

HIDDEN = DEMO / "hidden"

pytestmark = pytest.mark.skipif(not (HIDDEN / "hidden_config.json").exists(),
                                reason="Hidden Transfer maps not trained (scripts/train_hidden.py)")


def deployment(drafter: str | None, mode: str = "async") -> Engine:
    data: dict[str, Any] = {"verifier": {"model": str(DEMO / "target"), "hidden_transfer": str(HIDDEN)},
                            "speculation": {"mode": mode, "local_lookup": False}}
    if drafter is not None:
        data["drafter"] = {"kind": drafter, "model": str(DEMO / drafter)}
    engine = Engine.build(TandemConfig.from_dict(data), calibrate=False)
    fix_cost(engine.handlers[b"verifier-0"], "flat")  # timing-free choices: every node and anchor is worth it
    return engine


def test_maps_fit_the_demo_target(target: TargetVerifier) -> None:
    maps = TransferMaps.load(HIDDEN)
    maps.config.check_target(target.config)
    assert 0 < maps.config.layer < target.config.num_hidden_layers
    assert sum(f.stat().st_size for f in Path(HIDDEN).iterdir()) < 2e6
    assert (HIDDEN / "training_report.json").exists()


def test_hidden_transfer_alone_is_lossless_and_speculates(prompt: list[int], reference: list[int]) -> None:
    out = deployment(None).generate(prompt, max_new_tokens=NEW_TOKENS)
    assert out.token_ids == reference
    assert out.stats["tau"] > 1.2  # guess trees alone, no lookup: more than one token per verification


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_beside_falcon_is_lossless(prompt: list[int], reference: list[int], mode: str) -> None:
    engine = deployment("falcon", mode)
    assert engine.generate(prompt, max_new_tokens=NEW_TOKENS).token_ids == reference
    assert engine.handlers[b"verifier-0"].counters["num_hidden_trees"] > 0

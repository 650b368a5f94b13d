"""Helpers for end-to-end tests: tiny checkpoints on disk and YAML files on free loopback ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from runtime.launch import free_port
from tests.models import tiny_model
from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel


def save_models(root: Path) -> dict[str, Path]:
    """A tiny target, a small draft model and a draft model with another vocabulary (for refusals)."""
    paths = {"target": root / "target", "draft": root / "draft", "bad_draft": root / "bad_draft",
             "falcon": root / "falcon"}
    target = tiny_model("llama", seed=11)
    target.save_pretrained(paths["target"])
    torch.manual_seed(0)  # an untrained Falcon drafter: correct, rarely right
    config = FalconConfig.from_target_config(target.config)
    FalconDrafterModel(config, target.get_input_embeddings().weight.detach(),
                       target.get_output_embeddings().weight.detach()).save(paths["falcon"])
    tiny_model("llama", seed=11).save_pretrained(paths["draft"])  # the target itself: a perfect drafter
    tiny_model("llama", seed=3, vocab_size=80).save_pretrained(paths["bad_draft"])
    return paths


def write_config(path: Path, target: Path, mode: str, drafter: dict[str, Any] | None, **limits: Any) -> Path:
    data: dict[str, Any] = {
        "coordinator": {"client_address": f"tcp://127.0.0.1:{free_port()}",
                        "worker_address": f"tcp://127.0.0.1:{free_port()}",
                        "heartbeat_interval_s": 0.2, "worker_timeout_s": 2.0, "log_level": "WARNING"},
        "verifier": {"model": str(target), "num_threads": 1},
        "speculation": {"mode": mode, "tree": {"total_tokens": 16, "depth": 5, "top_k": 3}},
        "limits": {"max_new_tokens": 256, "request_timeout_s": 120, **limits},
    }
    if drafter is not None:
        data["drafter"] = {"num_threads": 1, **drafter}
    path.write_text(yaml.safe_dump(data))
    return path

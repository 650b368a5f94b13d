"""Building each process's objects from a `TandemConfig`: placement, models, workers, reference."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from runtime.config import DrafterConfig, TandemConfig, VerifierConfig

log = logging.getLogger(__name__)


def apply_placement(section: VerifierConfig | DrafterConfig) -> None:
    """Pin this process to its CPU cores and set torch's intra-op threads, as the YAML says."""
    import psutil
    import torch

    if section.cpu_affinity:
        psutil.Process().cpu_affinity(list(section.cpu_affinity))
    if section.num_threads:
        torch.set_num_threads(section.num_threads)


def read_reference(model_dir: str) -> dict[str, Any]:
    """The target's fingerprint from its checkpoint files, without loading weights or torch."""
    from workers.verifier_worker import fingerprint, tokenizer_hash

    config = json.loads((Path(model_dir) / "config.json").read_text())
    text = config.get("text_config", config)
    return fingerprint(int(text["vocab_size"]), int(text["hidden_size"]), tokenizer_hash(model_dir),
                       os.path.basename(os.path.normpath(model_dir)))


def read_eos_ids(model_dir: str) -> frozenset[int]:
    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else list(eos or []))
    return frozenset(ids)


def load_tokenizer(model_dir: str) -> Any:
    """The target's tokenizer, or None when the checkpoint has none (then clients send token ids)."""
    if not any((Path(model_dir) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def build_verifier_worker(config: TandemConfig, worker_id: str, calibrate: bool = True) -> Any:
    from workers.elastic import core_lease
    from workers.target import TargetVerifier
    from workers.verifier_worker import VerifierWorker, tokenizer_hash

    section = config.verifier
    apply_placement(section)
    target = TargetVerifier.from_pretrained(section.model, section.torch_dtype, section.device,
                                            section.attn_implementation, section.lean_forward)
    speculation, limits = config.speculation, config.limits
    max_length = section.max_length or limits.max_prompt_tokens + limits.max_new_tokens
    hidden = build_hidden_source(section.hidden_transfer, target) if section.hidden_transfer else None
    drafter = config.drafter
    disable_at = speculation.disable_at_requests if speculation.mode != "off" and drafter else 0
    lease = core_lease(section.cpu_affinity, section.num_threads, drafter.cpu_affinity, section.device,
                       drafter.device) if disable_at and drafter and section.borrow_drafter_cores else None
    worker = VerifierWorker(target, worker_id, tokenizer_hash(section.model), os.path.basename(section.model),
                            speculation.acceptance, max(speculation.tree.total_tokens, 1), speculation.local_lookup,
                            max_running=limits.max_running_per_verifier, max_batch=section.max_batch,
                            max_length=max_length, prefill_chunk=section.prefill_chunk,
                            compile_backend="inductor" if section.compile else None,
                            target_candidates=speculation.target_candidates, hidden=hidden,
                            merge_sources=speculation.merge_sources, disable_at=disable_at, lease=lease)
    if speculation.mode != "off" and calibrate:
        worker.calibrate()  # t(n) for the cost model; refined online
    return worker


def build_hidden_source(directory: str, target: Any) -> Any:
    """Hidden Transfer maps on the target's device and dtype, checked against its shape."""
    from workers.hidden_source import HiddenSource
    from workers.hidden_transfer import TransferMaps

    maps = TransferMaps.load(directory, target.dtype, target.device)
    maps.config.check_target(target.config, f"verifier.hidden_transfer ({directory})")
    log.info("hidden transfer: %s (layer %d, k = %d)", directory, maps.config.layer, maps.config.num_offsets)
    return HiddenSource(maps, int(target.config.num_hidden_layers))


def build_drafter_worker(config: TandemConfig, worker_id: str) -> Any:
    from workers.drafter_worker import DrafterWorker
    from workers.verifier_worker import tokenizer_hash

    section = config.drafter
    if section is None:
        raise ValueError("this config has no drafter section")
    apply_placement(section)
    drafter, vocab_size, hidden_size = build_drafter(section, config.verifier.model)
    model_hash = tokenizer_hash(section.model) if section.kind == "model" and section.model else ""
    return DrafterWorker(drafter, config.speculation.tree, config.speculation.mode, worker_id, section.device,
                         vocab_size, hidden_size, model_hash, os.path.basename(section.model or section.kind),
                         disable_at=config.speculation.disable_at_requests)


def build_drafter(section: DrafterConfig, target_dir: str) -> tuple[Any, int, int]:
    """(drafter, vocab size, hidden size it expects; 0 = any)."""
    from workers.drafters.falcon import FalconDrafter
    from workers.drafters.model import ModelDrafter
    from workers.drafters.ngram import NgramDrafter

    if section.kind == "ngram":
        return NgramDrafter(section.max_ngram, section.min_ngram), 0, 0
    if section.kind == "oracle":
        return build_oracle(section, target_dir), 0, 0
    if section.model is None:
        raise ValueError(f"drafter.model is required for kind {section.kind!r}")
    if section.kind == "model":
        model_drafter = ModelDrafter.from_pretrained(section.model, section.torch_dtype, section.device,
                                                     section.attn_implementation)
        return model_drafter, model_drafter.vocab_size, 0
    falcon = FalconDrafter.from_pretrained(section.model, target_dir, section.device, section.torch_dtype)
    return falcon, falcon.model.config.vocab_size, falcon.model.config.hidden_size


def build_oracle(section: DrafterConfig, target_dir: str) -> Any:
    """The benchmark-only oracle drafter (scale mode), sized to the target's vocabulary."""
    from workers.drafters.oracle import OracleDrafter

    config = json.loads((Path(target_dir) / "config.json").read_text())
    vocab_size = int(config.get("text_config", config)["vocab_size"])
    if section.oracle_reference is None:
        raise ValueError("drafter.oracle_reference is required for kind 'oracle'")
    return OracleDrafter.from_file(section.oracle_reference, vocab_size, section.oracle_accept_prob,
                                   section.oracle_seed, section.oracle_step_ms)

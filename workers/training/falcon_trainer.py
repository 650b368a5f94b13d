"""Falcon drafter training around CSGD: the drafter built on a frozen HF target, one step's loss with the
target's features computed on the fly, held-out per-depth accuracy, and the drafter saved to disk.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from workers.drafters.falcon_model import FalconConfig, FalconDrafterModel, load_target_head
from workers.training.csgd import CSGDConfig, Targets, build_layout, csgd_loss
from workers.training.lm import SAVE_DTYPES
from workers.training.loop import StepOutput
from workers.training.tokens import random_windows, step_generator


def load_frozen_target(target_dir: str | Path) -> Any:
    """The target in fp32 on CPU, eval mode, no grad; sdpa attention."""
    model: Any = AutoModelForCausalLM.from_pretrained(str(target_dir), dtype=torch.float32,
                                                      attn_implementation="sdpa")
    return model.eval().requires_grad_(False)


def build_drafter(target_dir: str | Path, target_config: Any, num_layers: int, block_size: int,
                  seed: int) -> FalconDrafterModel:
    """A fresh drafter whose embedding and LM head are the target's (read like inference reads them)."""
    config = FalconConfig.from_target_config(target_config, num_layers=num_layers, block_size=block_size)
    embed, lm_head = load_target_head(target_dir)
    torch.manual_seed(seed)
    model = FalconDrafterModel(config, embed.float(), lm_head.float())
    return model.place("cpu", torch.float32).train()


@dataclass(frozen=True)
class FalconBatches:
    """Training windows of `seq_len` tokens (seq_len - 1 pairs) drawn per step from `stream`."""

    stream: torch.Tensor
    batch_size: int
    seq_len: int
    seed: int

    def __call__(self, step: int) -> torch.Tensor:
        return random_windows(self.stream, self.batch_size, self.seq_len, step_generator(self.seed, step))


def make_step_fn(model: FalconDrafterModel, target: Any, batches: FalconBatches,
                 config: CSGDConfig) -> Callable[[int], StepOutput]:
    """The loop's `step_fn`: features of the frozen target, then the CSGD loss of one batch."""
    layout = build_layout(batches.seq_len - 1, model.config.block_size)

    def step_fn(step: int) -> StepOutput:
        windows = batches(step)
        targets = Targets.of(target, windows)
        out = csgd_loss(model, windows, targets, layout, config, step_generator(batches.seed + 1, step))
        num_slots = windows.shape[0] * (layout.positions.numel() - layout.num_pairs)
        metrics = {"feature_loss": out.feature_loss, "distill_loss": out.distill_loss,
                   "glanced_frac": out.num_glanced / max(num_slots, 1),
                   **{f"acc_d{d + 1}": a for d, a in enumerate(out.accuracy_per_depth)}}
        return StepOutput(out.loss, windows.numel(), metrics)
    return step_fn


@torch.no_grad()
def held_out_metrics(model: FalconDrafterModel, target: Any, windows: torch.Tensor, config: CSGDConfig,
                     batch_size: int = 8) -> dict[str, float]:
    """Losses and per-depth accuracy (drafter argmax == target argmax) on held-out windows, no glancing."""
    was_training = model.training
    model.eval()
    layout = build_layout(windows.shape[1] - 1, model.config.block_size)
    plain = CSGDConfig(config.feature_weight, config.distill_weight, False, config.glance_ratio,
                       config.smooth_l1_beta)
    totals: dict[str, float] = {}
    num_batches = 0
    for start in range(0, windows.shape[0], batch_size):  # a few batches
        chunk = windows[start:start + batch_size]
        out = csgd_loss(model, chunk, Targets.of(target, chunk), layout, plain, torch.Generator())
        values = {"loss": float(out.loss), "feature_loss": out.feature_loss, "distill_loss": out.distill_loss,
                  **{f"acc_d{d + 1}": a for d, a in enumerate(out.accuracy_per_depth)}}
        for key, value in values.items():
            totals[key] = totals.get(key, 0.0) + value
        num_batches += 1
    model.train(was_training)
    return {key: value / num_batches for key, value in totals.items()}


def save_drafter(model: FalconDrafterModel, out_dir: str | Path, dtype: str = "float16") -> None:
    """falcon_config.json + the drafter's own weights in `dtype` (FalconDrafterModel.load casts them back)."""
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save dtype must be one of {sorted(SAVE_DTYPES)}, got {dtype!r}")
    stored = copy.deepcopy(model).to(SAVE_DTYPES[dtype])
    stored.save(out_dir)

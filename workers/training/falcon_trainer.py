"""Falcon drafter training around CSGD: the drafter built on a frozen HF target (Llama or Qwen2 family), one
step's loss with the target's features computed on the fly, held-out per-depth accuracy, and the drafter
saved to disk. Devices and dtypes: workers/training/precision.py.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from workers.drafters.falcon_model import CONFIG_FILE, WEIGHTS_FILE, FalconConfig, FalconDrafterModel, load_target_head
from workers.hf_model import load_causal_lm
from workers.training.csgd import CSGDConfig, Targets, build_layout, csgd_loss
from workers.training.lm import SAVE_DTYPES
from workers.training.loop import StepOutput
from workers.training.precision import Precision
from workers.training.tokens import step_generator, window_index

CPU = Precision()


def load_frozen_target(target_dir: str | Path, precision: Precision = CPU) -> Any:
    """The target on the device in its dtype, eval mode, no grad; sdpa attention."""
    model = load_causal_lm(str(target_dir), precision.target_dtype, precision.device)
    return model.requires_grad_(False)


def build_drafter(target_dir: str | Path, target_config: Any, num_layers: int, block_size: int,
                  seed: int, precision: Precision = CPU) -> FalconDrafterModel:
    """A fresh fp32 drafter whose embedding and LM head are the target's (read like inference reads them;
    Qwen2's attention biases and rope scaling are the target's own, the drafter needs neither)."""
    config = FalconConfig.from_target_config(target_config, num_layers=num_layers, block_size=block_size)
    embed, lm_head = load_target_head(target_dir)
    # frozen, so held in the compute dtype (no fp32 master copy); a tied head stays one tensor
    head = embed.to(precision.device, precision.head_dtype)
    out = head if lm_head is embed else lm_head.to(precision.device, precision.head_dtype)
    torch.manual_seed(seed)
    model = FalconDrafterModel(config, head, out).to(precision.device)  # own weights: fp32 master copies
    return model.train()


def init_from(model: FalconDrafterModel, drafter_dir: str | Path) -> None:
    """Start from a saved drafter's weights (fine-tuning). Its shape must equal `model`'s, or differ only by
    having fewer layers: then the saved layers become the first ones, and each extra layer starts with its
    output projections (attention's `o_proj`, the MLP's `down_proj`) at zero, so it adds nothing to the
    residual stream and the deeper drafter starts out computing exactly what the saved one does."""
    path = Path(drafter_dir)
    saved = FalconConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    deeper = dataclasses.replace(saved, num_layers=model.config.num_layers) == model.config \
        and saved.num_layers < model.config.num_layers
    if saved != model.config and not deeper:
        raise ValueError(f"--init {path}: its config {saved} differs from the drafter being trained {model.config} "
                         "(only a drafter with more layers can start from it)")
    weights = load_file(path / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=not deeper)
    new_layers = range(saved.num_layers, model.config.num_layers)
    if unexpected or any(not k.startswith(tuple(f"layers.{i}." for i in new_layers)) for k in missing):
        raise ValueError(f"--init {path}: weights do not match the drafter (missing {missing}, extra {unexpected})")
    with torch.no_grad():
        for i in new_layers:
            layer: Any = model.layers[i]
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


@dataclass(frozen=True)
class FalconBatches:
    """Training windows of `seq_len` tokens (seq_len - 1 pairs) drawn per step from `stream`, with the
    windows of `weights` ([N] bool, TokenStream.position_weights; None = every position is trained on)."""

    stream: torch.Tensor
    batch_size: int
    seq_len: int
    seed: int
    weights: torch.Tensor | None = None

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = window_index(self.stream.numel(), self.batch_size, self.seq_len, step_generator(self.seed, step))
        return self.stream[index], None if self.weights is None else self.weights[index]


@dataclass(frozen=True)
class MixedBatches:
    """Each step's windows drawn from several streams, a fixed number of windows per stream (e.g. 4 of 8
    from the corpus and 4 from self-distillation data); weights are all True where a part has none."""

    parts: tuple[FalconBatches, ...]

    def __post_init__(self) -> None:
        if not self.parts or len({p.seq_len for p in self.parts}) != 1:
            raise ValueError("MixedBatches needs at least one part, all with the same seq_len")

    @property
    def seq_len(self) -> int:
        return self.parts[0].seq_len

    @property
    def seed(self) -> int:
        return self.parts[0].seed

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        drawn = [part(step) for part in self.parts if part.batch_size > 0]
        if all(weights is None for _, weights in drawn):
            return torch.cat([w for w, _ in drawn]), None
        return (torch.cat([w for w, _ in drawn]),
                torch.cat([torch.ones_like(w, dtype=torch.bool) if m is None else m for w, m in drawn]))


def make_step_fn(model: FalconDrafterModel, target: Any, batches: FalconBatches | MixedBatches, config: CSGDConfig,
                 precision: Precision = CPU) -> Callable[[int], StepOutput]:
    """The loop's `step_fn`: features of the frozen target, then the CSGD loss of one batch."""
    layout = build_layout(batches.seq_len - 1, model.config.block_size)

    def step_fn(step: int) -> StepOutput:
        windows, weights = batches(step)
        windows = windows.to(precision.device)
        targets = Targets.of(target, windows, weights)
        with precision.autocast():
            out = csgd_loss(model, windows, targets, layout, config, step_generator(batches.seed + 1, step))
        num_slots = windows.shape[0] * (layout.positions.numel() - layout.num_pairs)
        metrics = {"feature_loss": out.feature_loss, "distill_loss": out.distill_loss,
                   "glanced_frac": out.num_glanced / max(num_slots, 1),
                   **{f"acc_d{d + 1}": a for d, a in enumerate(out.accuracy_per_depth)}}
        return StepOutput(out.loss, windows.numel(), metrics)
    return step_fn


@torch.no_grad()
def held_out_metrics(model: FalconDrafterModel, target: Any, windows: torch.Tensor, config: CSGDConfig,
                     batch_size: int = 8, weights: torch.Tensor | None = None,
                     precision: Precision = CPU) -> dict[str, float]:
    """Losses and per-depth accuracy (drafter argmax == target argmax) on held-out windows [W, L] (positions
    `weights` [W, L] marks, default all), no glancing; each a mean over the batches where it is defined."""
    was_training = model.training
    model.eval()
    layout = build_layout(windows.shape[1] - 1, model.config.block_size)
    plain = CSGDConfig(config.feature_weight, config.distill_weight, False, config.glance_ratio,
                       config.smooth_l1_beta)
    values: dict[str, list[float]] = {}
    for start in range(0, windows.shape[0], batch_size):  # a few batches
        chunk_weights = None if weights is None else weights[start:start + batch_size]
        if chunk_weights is not None and not bool(chunk_weights[:, 1:].any()):
            continue  # no row of this batch is trained on (e.g. only user turns); rows use positions 1..L-1
        chunk = windows[start:start + batch_size].to(precision.device)
        targets = Targets.of(target, chunk, chunk_weights)
        with precision.autocast():
            out = csgd_loss(model, chunk, targets, layout, plain, torch.Generator())
        batch = {"loss": float(out.loss), "feature_loss": out.feature_loss, "distill_loss": out.distill_loss,
                 **{f"acc_d{d + 1}": a for d, a in enumerate(out.accuracy_per_depth)}}
        for key, value in batch.items():
            if not math.isnan(value):
                values.setdefault(key, []).append(value)
    model.train(was_training)
    return {key: sum(v) / len(v) for key, v in values.items()}


def save_drafter(model: FalconDrafterModel, out_dir: str | Path, dtype: str = "float16") -> None:
    """falcon_config.json + the drafter's own weights in `dtype` (FalconDrafterModel.load casts them back)."""
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"save dtype must be one of {sorted(SAVE_DTYPES)}, got {dtype!r}")
    stored = copy.deepcopy(model).to("cpu", SAVE_DTYPES[dtype])
    stored.save(out_dir)

"""The shared training loop: AdamW with linear warm-up and cosine decay, gradient clipping, progress,
periodic held-out evaluation and atomic checkpoints that a run resumes from (same data per step).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule; CLI flags of the training scripts carry the same names."""

    num_steps: int = 1000
    lr: float = 1e-3  # peak learning rate, reached after `warmup_steps`
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 50
    weight_decay: float = 0.1  # on matrices only (not on norms, biases, placeholder vectors)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 = no clipping

    def __post_init__(self) -> None:
        for key in ("num_steps", "lr"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        for key in ("warmup_steps", "weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")


@dataclass
class TrainState:
    """What a checkpoint carries besides weights and optimizer moments."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training wall time, summed over resumed runs
    history: list[dict[str, float]] = field(default_factory=list)  # periodic logs and evaluations


@dataclass(frozen=True)
class StepOutput:
    loss: torch.Tensor  # scalar with grad
    num_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)


def lr_at(step: int, config: OptimConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to lr * min_lr_ratio at `num_steps - 1`."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(config.num_steps - 1 - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2))


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    meta: dict[str, Any]) -> None:
    """Write atomically (temp file + rename), so a crash mid-save keeps the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": asdict(state),
                "meta": meta}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    meta: dict[str, Any]) -> TrainState:
    """Restore weights, optimizer and state; refuses a checkpoint written with a different `meta`."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob["meta"] != meta:
        changed = sorted(k for k in set(blob["meta"]) | set(meta) if blob["meta"].get(k) != meta.get(k))
        raise ValueError(f"checkpoint {path} was written with different settings ({', '.join(changed)}); "
                         "use the same flags to resume, or drop --resume")
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    return TrainState(**blob["state"])


@dataclass(frozen=True)
class LoopHooks:
    """Optional side jobs of the loop, each every N steps (0 = never, except at the end for eval)."""

    checkpoint: Path | None = None
    checkpoint_every: int = 100
    evaluate: Callable[[], dict[str, float]] | None = None
    eval_every: int = 0
    log_every: int = 10
    meta: dict[str, Any] = field(default_factory=dict)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, step_fn: Callable[[int], StepOutput],
          config: OptimConfig, state: TrainState, hooks: LoopHooks) -> TrainState:
    """Run optimizer steps `state.step` .. `config.num_steps - 1`; `step_fn(step)` builds one batch's loss."""
    bar = tqdm(total=config.num_steps, initial=state.step, disable=not sys.stderr.isatty(), unit="step")
    window_tokens, window_start = 0, time.perf_counter()
    while state.step < config.num_steps:
        started = time.perf_counter()
        metrics = _one_step(model, optimizer, step_fn, config, state.step)
        state.elapsed_s += time.perf_counter() - started
        state.tokens_seen += int(metrics.pop("num_tokens"))
        window_tokens += int(metrics["tokens"])
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2e}")
        is_last = state.step == config.num_steps
        if state.step % max(hooks.log_every, 1) == 0 or is_last:
            rate = window_tokens / max(time.perf_counter() - window_start, 1e-9)
            window_tokens, window_start = 0, time.perf_counter()
            _log(state, {**metrics, "tokens_per_s": rate}, config)
        if hooks.evaluate is not None and (is_last or (hooks.eval_every and state.step % hooks.eval_every == 0)):
            _log(state, {f"eval_{k}": v for k, v in hooks.evaluate().items()}, config)
        if hooks.checkpoint is not None and (is_last or state.step % max(hooks.checkpoint_every, 1) == 0):
            save_checkpoint(hooks.checkpoint, model, optimizer, state, hooks.meta)
    bar.close()
    return state


def _one_step(model: nn.Module, optimizer: torch.optim.Optimizer, step_fn: Callable[[int], StepOutput],
              config: OptimConfig, step: int) -> dict[str, float]:
    lr = lr_at(step, config)
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    out = step_fn(step)
    torch.autograd.backward(out.loss)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip if config.grad_clip > 0 else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": float(out.loss.detach()), "lr": lr, "grad_norm": float(grad_norm),
            "num_tokens": float(out.num_tokens), "tokens": float(out.num_tokens), **out.metrics}


def _log(state: TrainState, values: dict[str, float], config: OptimConfig) -> None:
    entry = {"step": float(state.step), "tokens_seen": float(state.tokens_seen),
             "elapsed_s": round(state.elapsed_s, 1), **values}
    state.history.append(entry)
    shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
    logger.info("step %d/%d tokens=%d elapsed=%.0fs %s", state.step, config.num_steps, state.tokens_seen,
                state.elapsed_s, shown)

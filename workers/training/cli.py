"""Command-line pieces shared by the training scripts: logging setup, optimizer flags, checkpoint paths."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from workers.training.loop import OptimConfig


def setup(process_name: str, num_threads: int) -> None:
    """One logging setup per process (process name in every line) and the torch thread count."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {process_name} %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(num_threads)


def add_common_args(parser: argparse.ArgumentParser, defaults: OptimConfig) -> None:
    """Optimizer, schedule, checkpoint and run-control flags (names = OptimConfig fields)."""
    group = parser.add_argument_group("optimizer and schedule")
    group.add_argument("--steps", type=int, default=defaults.num_steps, help="optimizer steps")
    group.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (AdamW)")
    group.add_argument("--min-lr-ratio", type=float, default=defaults.min_lr_ratio,
                       help="cosine decay ends at lr * this ratio")
    group.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="linear warm-up steps")
    group.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                       help="AdamW weight decay on matrices (not norms / vectors)")
    group.add_argument("--beta1", type=float, default=defaults.beta1, help="AdamW beta1")
    group.add_argument("--beta2", type=float, default=defaults.beta2, help="AdamW beta2")
    group.add_argument("--grad-clip", type=float, default=defaults.grad_clip,
                       help="max global gradient norm (0 = off)")
    run = parser.add_argument_group("run control")
    run.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    run.add_argument("--log-every", type=int, default=10, help="log a progress line every N steps")
    run.add_argument("--checkpoint", default=None,
                     help="training checkpoint file (default: <tmp>/tandem_train/<out dir name>.pt)")
    run.add_argument("--checkpoint-every", type=int, default=50, help="save the checkpoint every N steps")
    run.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    run.add_argument("--num-threads", type=int, default=2, help="torch intra-op threads")


def optim_config(args: argparse.Namespace) -> OptimConfig:
    return OptimConfig(num_steps=args.steps, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
                       warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, beta1=args.beta1,
                       beta2=args.beta2, grad_clip=args.grad_clip)


def checkpoint_path(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    return Path(tempfile.gettempdir()) / "tandem_train" / f"{Path(args.out).name}.pt"

"""Train a Falcon drafter for a Llama- or Qwen2-family HF target on a local corpus with Coupled Sequential
Glancing Distillation (DESIGN.md §7; the method is described in workers/training/csgd.py).

The target is frozen; its features and next-token distributions are computed on the fly (no grad).
Chat data (JSONL lines `{"messages": [{"role": ..., "content": ...}, ...]}`) is rendered with the
tokenizer's chat template and only the assistant replies are trained on (content + end-of-turn token;
located by rendering the conversation prefix by prefix, see workers/training/chat.py).
Precision (workers/training/precision.py): the target is stored and run in `--dtype`; the drafter keeps
fp32 master weights and AdamW state, and with bfloat16 runs its forward/backward under torch.autocast.
At the end the drafter is saved and evaluated on held-out prompts with the runtime's own loop
(runtime.generate.speculative_generate, FalconDrafter, TreeConfig): τ and acceptance per depth at
temperature 0.

| flag | default | meaning |
|---|---|---|
| `--target` | `models/demo/target` | target HF checkpoint directory (Llama or Qwen2 family) |
| `--tokenizer` | the target dir | tokenizer directory |
| `--corpus` | `stdlib` | `stdlib`, a directory of text files, or a JSONL file ("text" or chat "messages" per line) |
| `--extra-corpus` | none | a second corpus mixed into every batch (e.g. scripts/gen_distill_data.py's JSONL) |
| `--extra-share` | 0.5 | share of each batch's windows drawn from `--extra-corpus` (rounded to whole windows) |
| `--init` | none | start from a saved drafter (fresh optimizer; same shape, or fewer layers: new ones add nothing) |
| `--chat-template` | the tokenizer's | Jinja chat template file, for a tokenizer without one (needed for chat data) |
| `--device` | `cpu` | `cpu`, `cuda` or `cuda:N`: where the target and the drafter run |
| `--dtype` | `float32` | target dtype (`float32`, `bfloat16`, `float16`); `bfloat16` also autocasts the drafter |
| `--out` | `models/demo/falcon` | output directory (falcon_config.json + model.safetensors) |
| `--num-layers` | 2 | drafter decoder layers |
| `--block-size` | 2 | k: tokens predicted per drafter forward |
| `--seq-len` | 256 | training window (tokens; window − 1 pairs) |
| `--batch-size` | 8 | windows per step |
| `--steps` | 600 | optimizer steps |
| `--lr` | 2e-3 | peak AdamW learning rate |
| `--min-lr-ratio` | 0.1 | cosine decay ends at lr × ratio |
| `--warmup-steps` | 30 | linear warm-up steps |
| `--weight-decay` | 0.0 | AdamW weight decay (matrices only) |
| `--beta1`, `--beta2` | 0.9, 0.95 | AdamW betas |
| `--grad-clip` | 1.0 | max global gradient norm (0 = off) |
| `--feature-weight` | 1.0 | weight of the smooth-L1 feature regression |
| `--distill-weight` | 1.0 | weight of the soft cross-entropy to the target's distribution |
| `--glance-ratio` | 0.5 | placeholder slots replaced per first-pass mistake (k=2: glanced share = error rate) |
| `--no-glance` | off | ablation: one pass, no replaced inputs |
| `--smooth-l1-beta` | 1.0 | smooth-L1 transition point |
| `--eval-every` | 150 | held-out loss / per-depth accuracy every N steps (and at the end) |
| `--eval-windows` | 32 | held-out windows for that evaluation |
| `--eval-prompts` | 20 | held-out prompts for the final τ evaluation (0 = skip) |
| `--eval-new-tokens` | 64 | new tokens per prompt |
| `--eval-min-prompt-tokens` / `--eval-max-prompt-tokens` | 64 / 128 | prompt length range |
| `--eval-tree` | `default` | tree preset of runtime/drafter_eval.py or TOTAL:DEPTH:TOP_K |
| `--save-dtype` | float16 | dtype of the saved drafter weights (loads back in fp32) |
| `--compile` | off | torch.compile the training step |
| `--seed` | 0 | initialisation, data-order and glancing seed |
| `--log-every` | 10 | progress line every N steps |
| `--checkpoint` | `<tmp>/tandem_train/<out name>.pt` | training checkpoint (weights, AdamW state, step) |
| `--checkpoint-every` | 50 | checkpoint every N steps |
| `--resume` | off | continue from `--checkpoint` (same data and glancing per step) |
| `--num-threads` | 2 | torch intra-op threads |

Writes `training_report.json` (parameters, tokens seen, time, tokens/s, peak memory — CUDA allocated on a
GPU, peak RSS on CPU — held-out metrics, τ) next to the weights.

A real target on one GPU (e.g. Llama-3.1-8B-Instruct, Qwen2.5-7B-Instruct; memory and time projections in
models/demo/README.md, "Training a drafter for a real target"):

    python scripts/train_drafter.py --target /ckpt/Llama-3.1-8B-Instruct --corpus chat.jsonl \
        --out models/falcon-llama31-8b --device cuda --dtype bfloat16 --seq-len 1024 --batch-size 2 \
        --steps 50000 --lr 5e-4 --warmup-steps 1000 --eval-every 2500 --checkpoint-every 1000 \
        --save-dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from runtime.drafter_eval import evaluate, load_prompts, parse_tree, reference_outputs
from runtime.stopping import StopRules
from workers.drafters.falcon import FalconDrafter
from workers.target import TargetVerifier
from workers.training import cli
from workers.training.chat import set_chat_template
from workers.training.corpus import read_corpus
from workers.training.csgd import CSGDConfig
from workers.training.dataset import build_stream
from workers.training.falcon_trainer import (
    FalconBatches,
    MixedBatches,
    build_drafter,
    held_out_metrics,
    init_from,
    load_frozen_target,
    make_step_fn,
    save_drafter,
)
from workers.training.lm import num_parameters
from workers.training.loop import LoopHooks, OptimConfig, TrainState, load_checkpoint, make_optimizer, train
from workers.training.precision import DTYPES, Precision, peak_memory_bytes
from workers.training.tokens import eval_windows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("models and data")
    data.add_argument("--target", default="models/demo/target", help="target HF checkpoint directory")
    data.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the target's)")
    data.add_argument("--corpus", default="stdlib",
                      help="'stdlib', a text-file directory or a JSONL file ('text' or chat 'messages' lines)")
    data.add_argument("--extra-corpus", default=None, help="second training corpus mixed into every batch")
    data.add_argument("--extra-share", type=float, default=0.5, help="share of each batch from --extra-corpus")
    data.add_argument("--init", default=None, help="start from this saved drafter's weights")
    data.add_argument("--chat-template", default=None, help="Jinja chat template file (default: the tokenizer's)")
    data.add_argument("--out", default="models/demo/falcon", help="output drafter directory")
    data.add_argument("--num-layers", type=int, default=2, help="drafter decoder layers")
    data.add_argument("--block-size", type=int, default=2, help="k: tokens per drafter forward")
    data.add_argument("--seq-len", type=int, default=256, help="training window length")
    data.add_argument("--batch-size", type=int, default=8, help="windows per step")
    data.add_argument("--save-dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    data.add_argument("--compile", action="store_true", help="torch.compile the training step")
    data.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (target and drafter)")
    data.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                      help="frozen target dtype; bfloat16 also autocasts the drafter (fp32 master weights)")
    csgd = parser.add_argument_group("CSGD")
    csgd.add_argument("--feature-weight", type=float, default=1.0, help="smooth-L1 feature regression weight")
    csgd.add_argument("--distill-weight", type=float, default=1.0, help="soft cross-entropy weight")
    csgd.add_argument("--glance-ratio", type=float, default=0.5, help="replaced slots per first-pass mistake")
    csgd.add_argument("--no-glance", action="store_true", help="ablation: train without glancing")
    csgd.add_argument("--smooth-l1-beta", type=float, default=1.0, help="smooth-L1 beta")
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--eval-every", type=int, default=150, help="held-out metrics every N steps")
    ev.add_argument("--eval-windows", type=int, default=32, help="held-out windows for those metrics")
    ev.add_argument("--eval-prompts", type=int, default=20, help="held-out prompts for the final τ (0 = skip)")
    ev.add_argument("--eval-new-tokens", type=int, default=64, help="new tokens per prompt")
    ev.add_argument("--eval-min-prompt-tokens", type=int, default=64, help="shortest prompt")
    ev.add_argument("--eval-max-prompt-tokens", type=int, default=128, help="longest prompt")
    ev.add_argument("--eval-tree", default="default", help="tree preset or TOTAL:DEPTH:TOP_K")
    cli.add_common_args(parser, OptimConfig(num_steps=600, lr=2e-3, warmup_steps=30, weight_decay=0.0))
    return parser


def csgd_config(args: argparse.Namespace) -> CSGDConfig:
    return CSGDConfig(feature_weight=args.feature_weight, distill_weight=args.distill_weight,
                      is_glancing=not args.no_glance, glance_ratio=args.glance_ratio,
                      smooth_l1_beta=args.smooth_l1_beta)


def tau_evaluation(args: argparse.Namespace, tokenizer: Any) -> dict[str, Any]:
    """τ and acceptance per depth of the saved drafter, loaded the way the runtime loads it."""
    dtype, device = DTYPES[args.dtype], args.device
    target = TargetVerifier.from_pretrained(args.target, dtype=dtype, device=device)
    drafter = FalconDrafter.from_pretrained(args.out, args.target, device=device, dtype=dtype)
    prompts = load_prompts(tokenizer, args.corpus, args.eval_prompts, args.eval_min_prompt_tokens,
                           args.eval_max_prompt_tokens, args.seed)
    rules = StopRules(max_new_tokens=args.eval_new_tokens, stop_token_ids=frozenset({tokenizer.eos_token_id}))
    reference = reference_outputs(target, prompts, rules)
    return evaluate(target, drafter, prompts, rules, parse_tree(args.eval_tree), reference)


def training_batches(args: argparse.Namespace, tokenizer: Any) -> tuple[FalconBatches | MixedBatches, float]:
    """Each step's windows (the corpus alone, or mixed with --extra-corpus) and the trained position share."""
    stream = build_stream(tokenizer, read_corpus(args.corpus, "train"))
    weights = stream.position_weights if stream.is_masked else None
    if not args.extra_corpus:
        return (FalconBatches(stream.ids, args.batch_size, args.seq_len, args.seed, weights),
                float(stream.position_weights.float().mean()))
    if not 0 < args.extra_share < 1:
        raise SystemExit(f"--extra-share must be in (0, 1), got {args.extra_share}")
    extra = build_stream(tokenizer, read_corpus(args.extra_corpus, "train"))
    num_extra = min(max(round(args.batch_size * args.extra_share), 1), args.batch_size - 1)
    parts = (FalconBatches(stream.ids, args.batch_size - num_extra, args.seq_len, args.seed, weights),
             FalconBatches(extra.ids, num_extra, args.seq_len, args.seed + 7919, extra.position_weights))
    share = (float(stream.position_weights.float().mean()) * (args.batch_size - num_extra)
             + float(extra.position_weights.float().mean()) * num_extra) / args.batch_size
    return MixedBatches(parts), share


def held_out_windows(args: argparse.Namespace, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """[W, seq_len] held-out windows and their position weights (which predictions count)."""
    stream = build_stream(tokenizer, read_corpus(args.corpus, "held_out"))
    return (eval_windows(stream.ids, args.seq_len, args.eval_windows),
            eval_windows(stream.position_weights, args.seq_len, args.eval_windows))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.setup(Path(args.out).name, args.num_threads)
    wall_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.target)
    set_chat_template(tokenizer, args.chat_template)
    batches, trained_share = training_batches(args, tokenizer)
    held, held_weights = held_out_windows(args, tokenizer)
    precision = Precision(args.device, args.dtype)
    target = load_frozen_target(args.target, precision)
    model = build_drafter(args.target, target.config, args.num_layers, args.block_size, args.seed, precision)
    if args.init:
        init_from(model, args.init)
    config, csgd = cli.optim_config(args), csgd_config(args)
    optimizer = make_optimizer(model, config)
    meta = {k: v for k, v in vars(args).items() if k in _META_KEYS}
    ckpt = cli.checkpoint_path(args)
    state = load_checkpoint(ckpt, model, optimizer, meta) if args.resume and ckpt.exists() else TrainState()
    step_fn = make_step_fn(model, target, batches, csgd, precision)
    if args.compile:
        step_fn = torch.compile(step_fn)
    hooks = LoopHooks(checkpoint=ckpt, checkpoint_every=args.checkpoint_every,
                      evaluate=lambda: held_out_metrics(model, target, held, csgd, weights=held_weights,
                                                        precision=precision), eval_every=args.eval_every,
                      log_every=args.log_every, meta=meta)
    start_step, start_s, loaded_bytes = state.step, state.elapsed_s, peak_memory_bytes(args.device)
    state = train(model, optimizer, step_fn, config, state, hooks)
    save_drafter(model, args.out, args.save_dtype)
    run_s = max(state.elapsed_s - start_s, 1e-9)
    report: dict[str, Any] = {
        "parameters": num_parameters(model), "tokens_seen": state.tokens_seen, "steps": state.step,
        "train_s": round(state.elapsed_s, 1), "held_out": _last_eval(state),
        "tokens_per_s": round((state.step - start_step) * args.batch_size * args.seq_len / run_s, 1),
        **_memory_mb(args.device, loaded_bytes),
        "trained_position_share": round(trained_share, 4),
        "args": vars(args), "history": state.history}
    if args.eval_prompts:
        report["tau_eval"] = tau_evaluation(args, tokenizer)
    report["wall_s_this_run"] = round(time.perf_counter() - wall_start, 1)
    (Path(args.out) / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: report.get(k) for k in ("parameters", "tokens_seen", "train_s", "tokens_per_s", "peak_memory_mb",
                                          "held_out")}
    if "tau_eval" in report:
        summary["tau"] = report["tau_eval"]["tau"]
        summary["acceptance_per_depth"] = report["tau_eval"]["acceptance_per_depth"]
        summary["lossless"] = report["tau_eval"]["lossless"]
    print(json.dumps(summary))


_META_KEYS = ("target", "corpus", "extra_corpus", "extra_share", "init", "num_layers",
              "block_size", "seq_len", "batch_size", "lr",
              "min_lr_ratio", "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "feature_weight",
              "distill_weight", "glance_ratio", "no_glance", "smooth_l1_beta", "seed")


def _memory_mb(device: str, before_training_bytes: int) -> dict[str, float]:
    return {"peak_memory_mb": round(peak_memory_bytes(device) / 2**20, 1),
            "peak_memory_before_training_mb": round(before_training_bytes / 2**20, 1)}


def _last_eval(state: TrainState) -> dict[str, float]:
    evals = [h for h in state.history if "eval_loss" in h]
    return {k.removeprefix("eval_"): v for k, v in evals[-1].items() if k.startswith("eval_")} if evals else {}


if __name__ == "__main__":
    main()

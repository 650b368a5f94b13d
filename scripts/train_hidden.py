"""Train Hidden Transfer maps (seed 002) for a frozen Llama- or Qwen2-family target on its own text.

The target continues prompts cut from the corpus's training split (greedy and sampled; chat records: the
conversation up to the first assistant reply, rendered by the chat template) and the maps learn the
target's own next-token distributions on that text (logic in workers/training/hidden_trainer.py, the text
in workers/training/self_text.py). Held-out prompts (the corpus's held-out split) are continued greedily
and give the loss, the argmax agreement per offset and the top-1 chain acceptance per offset.

| flag | default | meaning |
|---|---|---|
| `--target` | `models/demo/target` | target HF checkpoint directory (Llama or Qwen2 family) |
| `--tokenizer` | the target dir | tokenizer directory |
| `--corpus` | `stdlib` | `stdlib`, a directory of text files, or a JSONL file ("text" or chat "messages" per line) |
| `--chat-template` | the tokenizer's | Jinja chat template file (for chat records and a tokenizer without one) |
| `--device` / `--dtype` | `cpu` / `float32` | where the target runs, its dtype (the maps keep fp32 weights) |
| `--out` | `models/demo/hidden` | output directory (hidden_config.json + model.safetensors + training_report.json) |
| `--layer` | 10 | l: the maps read the state after decoder layers [0, l); pseudo states pass layers [l, L) |
| `--num-offsets` | 3 | k: pseudo slots per node (tokens guessed after the bonus) |
| `--num-samples` / `--eval-samples` | 1024 / 64 | training / held-out prompts the target continues |
| `--prompt-tokens` / `--new-tokens` | 64 / 192 | prompt window and continuation length |
| `--sample-share` / `--temperature` | 0.5 / 1.0 | share of training continuations sampled (the rest greedy) |
| `--gen-batch-size` | 32 | prompts per generation batch |
| `--data-cache` | `<tmp>/tandem_train/<out>-data.pt` | the generated text, reused by runs with the same data flags |
| `--batch-size` | 8 | samples per step |
| `--anchors-per-sample` | 0 | train the slots of this many random positions per step (0 = every position) |
| `--eval-every` | 100 | held-out metrics every N steps (and at the end) |
| `--save-dtype` | float16 | dtype of the saved maps |
| `--steps` | 400 | optimizer steps |
| `--lr` / `--min-lr-ratio` | 2e-3 / 0.1 | peak AdamW learning rate; the cosine ends at lr × ratio |
| `--warmup-steps` | 20 | linear warm-up steps |
| `--weight-decay` | 0.0 | AdamW weight decay (matrices only) |
| `--beta1`, `--beta2` | 0.9, 0.95 | AdamW betas |
| `--grad-clip` | 1.0 | max global gradient norm (0 = off) |
| `--seed` | 0 | prompt choice, sampling, initialisation and data-order seed |
| `--log-every` | 10 | progress line every N steps |
| `--checkpoint` | `<tmp>/tandem_train/<out name>.pt` | training checkpoint (maps, AdamW state, step) |
| `--checkpoint-every` | 50 | checkpoint every N steps |
| `--resume` | off | continue from `--checkpoint` (same data per step) |
| `--num-threads` | 2 | torch intra-op threads |
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from workers.hidden_transfer import HiddenConfig, TransferMaps
from workers.training import cli
from workers.training.chat import set_chat_template
from workers.training.corpus import read_corpus
from workers.training.falcon_trainer import load_frozen_target
from workers.training.hidden_trainer import held_out_metrics, make_step_fn
from workers.training.lm import SAVE_DTYPES
from workers.training.loop import LoopHooks, OptimConfig, TrainState, load_checkpoint, make_optimizer, train
from workers.training.precision import DTYPES, Precision
from workers.training.self_text import SelfText, continue_prompts, corpus_prompts

_DATA_KEYS = ("target", "corpus", "num_samples", "eval_samples", "prompt_tokens", "new_tokens", "sample_share",
              "temperature", "seed", "dtype")
_META_KEYS = (*_DATA_KEYS, "layer", "num_offsets", "batch_size", "anchors_per_sample", "lr", "min_lr_ratio",
              "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("models and data")
    data.add_argument("--target", default="models/demo/target", help="target HF checkpoint directory")
    data.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the target's)")
    data.add_argument("--corpus", default="stdlib", help="'stdlib', a text-file directory or a JSONL file")
    data.add_argument("--chat-template", default=None, help="Jinja chat template file (default: the tokenizer's)")
    data.add_argument("--out", default="models/demo/hidden", help="output directory")
    data.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    data.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="frozen target dtype")
    data.add_argument("--layer", type=int, default=10, help="l: pseudo states are made after layers [0, l)")
    data.add_argument("--num-offsets", type=int, default=3, help="k: pseudo slots per node")
    data.add_argument("--num-samples", type=int, default=1024, help="training prompts the target continues")
    data.add_argument("--eval-samples", type=int, default=64, help="held-out prompts (continued greedily)")
    data.add_argument("--prompt-tokens", type=int, default=64, help="prompt length")
    data.add_argument("--new-tokens", type=int, default=192, help="continuation length")
    data.add_argument("--sample-share", type=float, default=0.5, help="share of training continuations sampled")
    data.add_argument("--temperature", type=float, default=1.0, help="temperature of the sampled ones")
    data.add_argument("--gen-batch-size", type=int, default=32, help="prompts per generation batch")
    data.add_argument("--data-cache", default=None, help="file of the generated text (reused when it exists)")
    data.add_argument("--batch-size", type=int, default=8, help="samples per step")
    data.add_argument("--anchors-per-sample", type=int, default=0, help="slot positions per step (0 = all)")
    data.add_argument("--eval-every", type=int, default=100, help="held-out metrics every N steps")
    data.add_argument("--save-dtype", default="float16", choices=sorted(SAVE_DTYPES))
    cli.add_common_args(parser, OptimConfig(num_steps=400, lr=2e-3, warmup_steps=20, weight_decay=0.0))
    return parser


def own_text(args: argparse.Namespace, model: Any, tokenizer: Any) -> tuple[SelfText, SelfText]:
    """(training text, held-out text), generated once and cached with the flags that made them."""
    path = Path(args.data_cache) if args.data_cache else cli.checkpoint_path(args).with_name(
        f"{Path(args.out).name}-data.pt")
    meta = {k: getattr(args, k) for k in _DATA_KEYS}
    if path.exists():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["meta"] == meta:
            return SelfText(blob["train_ids"], blob["train_weights"]), SelfText(blob["eval_ids"], blob["eval_weights"])
    eos = tokenizer.eos_token_id
    made = []
    for split, num, share in (("train", args.num_samples, args.sample_share), ("held_out", args.eval_samples, 0.0)):
        prompts = corpus_prompts(tokenizer, read_corpus(args.corpus, split), num, args.prompt_tokens, args.seed)
        made.append(continue_prompts(model, prompts, args.new_tokens, args.gen_batch_size, share, args.temperature,
                                     args.seed, eos, int(tokenizer.pad_token_id or 0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": meta, "train_ids": made[0].ids, "train_weights": made[0].weights,
                "eval_ids": made[1].ids, "eval_weights": made[1].weights}, path)
    return made[0], made[1]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.setup(Path(args.out).name, args.num_threads)
    wall_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.target)
    set_chat_template(tokenizer, args.chat_template)
    precision = Precision(args.device, args.dtype)
    model = load_frozen_target(args.target, precision)
    config = HiddenConfig.for_target(model.config, args.layer, args.num_offsets, Path(args.target).name)
    generate_start = time.perf_counter()
    train_text, eval_text = own_text(args, model, tokenizer)
    generate_s = time.perf_counter() - generate_start
    torch.manual_seed(args.seed)
    maps = TransferMaps(config).to(args.device).train()
    optim = cli.optim_config(args)
    optimizer = make_optimizer(maps, optim)
    meta = {k: getattr(args, k) for k in _META_KEYS}
    ckpt = cli.checkpoint_path(args)
    state = load_checkpoint(ckpt, maps, optimizer, meta) if args.resume and ckpt.exists() else TrainState()
    hooks = LoopHooks(checkpoint=ckpt, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
                      evaluate=lambda: held_out_metrics(model, maps, eval_text, args.batch_size, precision),
                      log_every=args.log_every, meta=meta)
    step_fn = make_step_fn(model, maps, train_text, args.batch_size, args.seed, precision, args.anchors_per_sample)
    state = train(maps, optimizer, step_fn, optim, state, hooks)
    maps.save(args.out, SAVE_DTYPES[args.save_dtype])
    evals = [h for h in state.history if "eval_loss" in h]
    report = {"config": config.__dict__, "parameters": sum(p.numel() for p in maps.parameters()),
              "steps": state.step, "train_s": round(state.elapsed_s, 1), "generate_s_this_run": round(generate_s, 1),
              "train_generated_tokens": train_text.num_generated, "eval_generated_tokens": eval_text.num_generated,
              "held_out": {k.removeprefix("eval_"): v for k, v in evals[-1].items() if k.startswith("eval_")}
              if evals else {},
              "wall_s_this_run": round(time.perf_counter() - wall_start, 1), "args": vars(args),
              "history": state.history}
    (Path(args.out) / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("parameters", "steps", "train_s", "held_out")}))


if __name__ == "__main__":
    main()

"""Train a Llama-architecture causal LM from scratch on a local corpus (the demo target; with
`--teacher` the AR draft model, distilled from the target — see scripts/train_draft.py).

| flag | default | meaning |
|---|---|---|
| `--corpus` | `stdlib` | `stdlib`, a directory of text files, or a JSONL file ("text" field); training split only |
| `--tokenizer` | `models/demo/tokenizer` | tokenizer directory (scripts/train_tokenizer.py) |
| `--out` | `models/demo/target` | output HF checkpoint directory |
| `--init` | none | start from this HF checkpoint instead of a fresh model (the shape flags are then ignored) |
| `--teacher` | none | HF model directory to distil from (soft cross-entropy to its next-token distribution) |
| `--hard-weight` | 0.0 | with `--teacher`: weight of the plain next-token loss added to the distillation loss |
| `--unlikelihood` | 0 | weight of the sequence-level unlikelihood loss (workers/training/unlikelihood.py) |
| `--ul-prefix`, `--ul-new` | 64, 96 | unlikelihood: training tokens continued, greedy tokens written |
| `--ul-ngram`, `--ul-batch` | 4, 8 | unlikelihood: the repeated n-gram penalised, continuations per step |
| `--eval-prompts` | 0 | at each evaluation, mean distinct-4-gram ratio of greedy completions of N held-out prompts |
| `--hidden-size` | 384 | model width |
| `--num-layers` | 6 | decoder layers |
| `--num-heads` | 6 | attention heads |
| `--num-kv-heads` | 2 | key/value heads (grouped-query attention) |
| `--intermediate-size` | 1024 | MLP width |
| `--max-position-embeddings` | 1024 | context length written to the config |
| `--rope-theta` | 10000 | rotary base |
| `--untied` | off | separate LM head (default: tied to the embedding) |
| `--seq-len` | 256 | training window length (tokens) |
| `--batch-size` | 16 | windows per step |
| `--steps` | 450 | optimizer steps |
| `--lr` | 1.5e-3 | peak AdamW learning rate |
| `--min-lr-ratio` | 0.1 | cosine decay ends at lr × ratio |
| `--warmup-steps` | 30 | linear warm-up steps |
| `--weight-decay` | 0.1 | AdamW weight decay (matrices only) |
| `--beta1`, `--beta2` | 0.9, 0.95 | AdamW betas |
| `--grad-clip` | 1.0 | max global gradient norm (0 = off) |
| `--eval-every` | 150 | held-out loss every N steps (and at the end) |
| `--eval-windows` | 64 | held-out windows of `--seq-len` tokens used for the loss |
| `--num-samples` | 3 | greedy completions of code prompts printed and stored at the end |
| `--sample-tokens` | 48 | new tokens per sample |
| `--save-dtype` | float16 | dtype of the saved weights (float16 / bfloat16 / float32) |
| `--compile` | off | torch.compile the training loss (≈20 % faster on CPU after ~1 min of compiling) |
| `--seed` | 0 | initialisation and data-order seed |
| `--log-every` | 10 | progress line every N steps |
| `--checkpoint` | `<tmp>/tandem_train/<out name>.pt` | training checkpoint (weights, AdamW state, step) |
| `--checkpoint-every` | 50 | checkpoint every N steps |
| `--resume` | off | continue from `--checkpoint` (same data order per step) |
| `--num-threads` | 2 | torch intra-op threads |

Writes `training_report.json` (parameters, tokens seen, time, held-out loss, samples; with `--init`, what
the starting checkpoint had been trained on and the total tokens) next to the weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.training import cli
from workers.training.corpus import read_corpus
from workers.training.lm import (
    LlamaShape,
    LMBatches,
    build_llama,
    greedy_completion,
    held_out_loss,
    make_step_fn,
    num_parameters,
    save_hf,
)
from workers.training.loop import LoopHooks, OptimConfig, TrainState, load_checkpoint, make_optimizer, train
from workers.training.quality import mean_distinct_ngram_ratio
from workers.training.tokens import encode_documents, encode_stream, eval_windows, held_out_prompts
from workers.training.unlikelihood import UnlikelihoodConfig, make_unlikelihood_step_fn

SAMPLE_PROMPTS = ("def fibonacci(n):\n", "import os\n\n\ndef list_python_files(root):\n",
                  "class Stack:\n    def __init__(self):\n")


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = parser.add_argument_group("data and output")
    data.add_argument("--corpus", default="stdlib", help="'stdlib', a text-file directory or a JSONL file")
    data.add_argument("--tokenizer", default="models/demo/tokenizer", help="tokenizer directory")
    data.add_argument("--out", default="models/demo/target", help="output HF checkpoint directory")
    data.add_argument("--init", default=None, help="start from this HF checkpoint (shape flags ignored)")
    data.add_argument("--teacher", default=None, help="HF model directory to distil from")
    data.add_argument("--hard-weight", type=float, default=0.0,
                      help="with --teacher: weight of the plain next-token loss")
    data.add_argument("--seq-len", type=int, default=256, help="training window length")
    data.add_argument("--batch-size", type=int, default=16, help="windows per step")
    data.add_argument("--eval-every", type=int, default=150, help="held-out loss every N steps")
    data.add_argument("--eval-windows", type=int, default=64, help="held-out windows for the loss")
    data.add_argument("--eval-prompts", type=int, default=0,
                      help="distinct-4-gram ratio of greedy completions of N held-out prompts at each evaluation")
    data.add_argument("--num-samples", type=int, default=3, help="greedy samples printed at the end")
    data.add_argument("--sample-tokens", type=int, default=48, help="new tokens per sample")
    data.add_argument("--save-dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    data.add_argument("--compile", action="store_true", help="torch.compile the training loss")
    ul = parser.add_argument_group("unlikelihood fine-tuning (with --init)")
    ul.add_argument("--unlikelihood", type=float, default=0.0,
                    help="weight of the sequence-level unlikelihood loss (0 = plain next-token training)")
    ul.add_argument("--ul-prefix", type=int, default=64, help="training tokens the model continues from")
    ul.add_argument("--ul-new", type=int, default=96, help="greedy tokens written per continuation")
    ul.add_argument("--ul-ngram", type=int, default=4, help="penalise tokens of n-grams repeated in the row")
    ul.add_argument("--ul-batch", type=int, default=8, help="continuations per step")
    shape = parser.add_argument_group("model shape")
    shape.add_argument("--hidden-size", type=int, default=384)
    shape.add_argument("--num-layers", type=int, default=6)
    shape.add_argument("--num-heads", type=int, default=6)
    shape.add_argument("--num-kv-heads", type=int, default=2)
    shape.add_argument("--intermediate-size", type=int, default=1024)
    shape.add_argument("--max-position-embeddings", type=int, default=1024)
    shape.add_argument("--rope-theta", type=float, default=10000.0)
    shape.add_argument("--untied", action="store_true", help="separate LM head (default: tied)")
    cli.add_common_args(parser, OptimConfig(num_steps=450, lr=1.5e-3, warmup_steps=30))
    return parser


def shape_of(args: argparse.Namespace) -> LlamaShape:
    return LlamaShape(hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=args.num_heads,
                      num_kv_heads=args.num_kv_heads, intermediate_size=args.intermediate_size,
                      max_position_embeddings=args.max_position_embeddings, rope_theta=args.rope_theta,
                      tie_word_embeddings=not args.untied)


def initial_model(args: argparse.Namespace, tokenizer: Any) -> Any:
    """A fresh Llama of the flags' shape, or the `--init` checkpoint in fp32 to train on."""
    if not args.init:
        return build_llama(shape_of(args), tokenizer, args.seed)
    model: Any = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32, attn_implementation="sdpa")
    if model.config.vocab_size != len(tokenizer):
        raise ValueError(f"--init {args.init} has vocab_size {model.config.vocab_size}, the tokenizer {len(tokenizer)}")
    return model.train()


def evaluate(model: Any, held_windows: torch.Tensor, prompts: list[list[int]]) -> dict[str, float]:
    """Held-out loss, and with prompts the mean distinct-4-gram ratio of their 128-token greedy completions."""
    result = held_out_loss(model, held_windows)
    if prompts:
        was_training = model.training
        model.eval()
        result["distinct4"] = mean_distinct_ngram_ratio([greedy_completion(model, p, 128) for p in prompts], 4)
        model.train(was_training)
    return result


def load_teacher(path: str | None, vocab_size: int) -> Any:
    if path is None:
        return None
    teacher: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    teacher.eval()
    if teacher.config.vocab_size != vocab_size:
        raise ValueError(f"teacher {path} has vocab_size {teacher.config.vocab_size}, the tokenizer {vocab_size}")
    return teacher.requires_grad_(False)


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> None:
    args = (parser or build_parser()).parse_args(argv)
    cli.setup(Path(args.out).name, args.num_threads)
    wall_start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    train_stream = encode_stream(tokenizer, read_corpus(args.corpus, "train"))
    held_docs = read_corpus(args.corpus, "held_out")
    held_windows = eval_windows(encode_stream(tokenizer, held_docs), args.seq_len, args.eval_windows)
    print(f"train tokens: {train_stream.numel()}  held-out eval tokens: {held_windows.numel()}", flush=True)
    model = initial_model(args, tokenizer)
    teacher = load_teacher(args.teacher or None, len(tokenizer))
    if args.unlikelihood and (teacher is not None or args.compile):
        raise SystemExit("--unlikelihood does not combine with --teacher or --compile")
    config = cli.optim_config(args)
    optimizer = make_optimizer(model, config)
    meta = {k: v for k, v in vars(args).items()
            if k not in ("resume", "checkpoint", "checkpoint_every", "log_every", "num_threads", "compile",
                         "eval_every", "eval_prompts", "num_samples", "sample_tokens", "steps")}
    if not args.unlikelihood:  # plain runs keep the settings they had before these flags existed
        meta = {k: v for k, v in meta.items() if not k.startswith("ul_") and k != "unlikelihood"}
    if not args.init:
        meta.pop("init")
    ckpt = cli.checkpoint_path(args)
    state = load_checkpoint(ckpt, model, optimizer, meta) if args.resume and ckpt.exists() else TrainState()
    batches = LMBatches(train_stream, args.batch_size, args.seq_len, args.seed)
    if args.unlikelihood:
        step_fn = make_unlikelihood_step_fn(model, batches, UnlikelihoodConfig(
            weight=args.unlikelihood, prefix_len=args.ul_prefix, num_new=args.ul_new, ngram=args.ul_ngram,
            batch_size=args.ul_batch))
    else:
        step_fn = make_step_fn(model, batches, teacher, args.hard_weight)
    if args.compile:
        step_fn = torch.compile(step_fn)
    prompts = held_out_prompts(encode_documents(tokenizer, held_docs), args.eval_prompts) if args.eval_prompts else []
    hooks = LoopHooks(checkpoint=ckpt, checkpoint_every=args.checkpoint_every,
                      evaluate=lambda: evaluate(model, held_windows, prompts), eval_every=args.eval_every,
                      log_every=args.log_every, meta=meta)
    state = train(model, optimizer, step_fn, config, state, hooks)
    save_hf(model, tokenizer, args.out, args.save_dtype)
    write_report(args, model, tokenizer, state, held_windows, time.perf_counter() - wall_start)


def init_lineage(init: str | None) -> dict[str, Any] | None:
    """What the `--init` checkpoint had been trained on (from its training_report.json), so a fine-tuned
    model's report still counts every token behind it."""
    path = Path(init) / "training_report.json" if init else None
    if path is None or not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    keep = ("tokens_seen", "steps", "train_s", "held_out_loss", "held_out_ppl")
    return {"path": init, **{k: earlier.get(k) for k in keep},
            "tokens_seen_total": earlier.get("tokens_seen_total", earlier.get("tokens_seen", 0))}


def write_report(args: argparse.Namespace, model: Any, tokenizer: Any, state: TrainState,
                 held_windows: torch.Tensor, wall_s: float) -> None:
    model.eval()
    samples = []
    for prompt in SAMPLE_PROMPTS[: args.num_samples]:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        samples.append({"prompt": prompt,
                        "completion": tokenizer.decode(greedy_completion(model, ids, args.sample_tokens))})
    evals = [h for h in state.history if "eval_loss" in h]
    before = init_lineage(args.init)
    report = {"parameters": num_parameters(model), "tokens_seen": state.tokens_seen, "steps": state.step,
              "tokens_seen_total": state.tokens_seen + (before["tokens_seen_total"] if before else 0),
              "init": before,
              "train_s": round(state.elapsed_s, 1), "wall_s_this_run": round(wall_s, 1),
              "held_out_loss": evals[-1]["eval_loss"] if evals else None,
              "held_out_ppl": evals[-1]["eval_ppl"] if evals else None,
              "samples": samples, "args": vars(args), "history": state.history}
    (Path(args.out) / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    for sample in samples:
        print(f"--- prompt: {sample['prompt']!r}\n{sample['prompt']}{sample['completion']}")
    print(json.dumps({k: report[k] for k in ("parameters", "tokens_seen", "train_s", "held_out_loss",
                                             "held_out_ppl")}))


if __name__ == "__main__":
    main()

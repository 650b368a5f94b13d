"""Generate self-distillation data: the target continues prompts cut from the training split of the stdlib and
site-packages (logic in workers/training/self_distill.py; the held-out rule is workers/training/corpus.py's).

| flag | default | meaning |
|---|---|---|
| `--target` | `models/demo/target` | target HF checkpoint directory (loaded in fp32) |
| `--out` | required | JSONL written (`{"id", "source", "ids", "prompt_len", "sampled", "batch"}` lines); appended |
| `--sources` | `stdlib,site-packages` | named sources whose training-split files give the prompts |
| `--num-prompts` | 8192 | prompts cut (the same list in every shard) |
| `--min-prompt-tokens` / `--max-prompt-tokens` | 32 / 128 | length of most prompts (whole lines from a random line) |
| `--short-share` | 0.3 | share of prompts that open at a def/class line and are short |
| `--short-min-tokens` | 8 | the short prompts' minimum length (their maximum is `--min-prompt-tokens`) |
| `--max-new-tokens` | 160 | continuation length (cut after EOS) |
| `--batch-size` | 64 | prompts per left-padded batch (prompts sorted by length) |
| `--sampled-share` | 0.25 | share of batches sampled at `--temperature` (the rest greedy) |
| `--temperature` | 0.8 | sampling temperature (full distribution, no top-k / top-p) |
| `--max-batches` | 0 | generate only batches b < N (the shortest prompts first; 0 = all) |
| `--shard` / `--num-shards` | 0 / 1 | this process generates batches b with b % num_shards == shard |
| `--seed` | 0 | prompt and sampling seed |
| `--merge` | none | comma-separated shard files: write them to `--out` ordered by batch, print statistics, exit |
| `--num-threads` | 1 | torch intra-op threads |

A run resumes: batches already in `--out` are skipped. Prints the file's statistics at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from workers.hf_model import load_causal_lm
from workers.training import cli
from workers.training.self_distill import (
    GenerationSpec,
    PromptSpec,
    batches,
    cut_prompts,
    done_batches,
    generate_records,
    merge_shards,
    summarize,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", default="models/demo/target", help="target HF checkpoint directory")
    parser.add_argument("--out", required=True, help="JSONL file to write (appended to; finished batches skipped)")
    parser.add_argument("--sources", default="stdlib,site-packages", help="comma-separated named sources")
    parser.add_argument("--num-prompts", type=int, default=8192, help="prompts cut")
    parser.add_argument("--min-prompt-tokens", type=int, default=32, help="shortest ordinary prompt")
    parser.add_argument("--max-prompt-tokens", type=int, default=128, help="longest prompt")
    parser.add_argument("--short-share", type=float, default=0.3, help="share of short def/class prompts")
    parser.add_argument("--short-min-tokens", type=int, default=8, help="shortest short prompt")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="continuation length")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per batch")
    parser.add_argument("--sampled-share", type=float, default=0.25, help="share of sampled batches")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument("--max-batches", type=int, default=0, help="only batches b < N (0 = all)")
    parser.add_argument("--shard", type=int, default=0, help="this process's shard")
    parser.add_argument("--num-shards", type=int, default=1, help="number of shards")
    parser.add_argument("--seed", type=int, default=0, help="prompt and sampling seed")
    parser.add_argument("--merge", default=None, help="shard files to merge into --out (then exit)")
    parser.add_argument("--num-threads", type=int, default=1, help="torch intra-op threads")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    cli.setup(f"gen{args.shard}", args.num_threads)
    if args.merge:
        merge_shards([Path(p) for p in args.merge.split(",")], Path(args.out))
        print(json.dumps(summarize(Path(args.out))))
        return
    if not 0 <= args.shard < args.num_shards:
        raise SystemExit(f"--shard must be in [0, {args.num_shards}), got {args.shard}")
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    prompt_spec = PromptSpec(args.min_prompt_tokens, args.max_prompt_tokens, args.short_share, args.short_min_tokens)
    gen_spec = GenerationSpec(args.max_new_tokens, args.batch_size, args.sampled_share, args.temperature)
    start = time.perf_counter()
    prompts = cut_prompts(tokenizer, args.sources.split(","), args.num_prompts, prompt_spec, args.seed)
    batch_list = batches(prompts, args.batch_size)
    print(f"{len(prompts)} prompts in {len(batch_list)} batches, cut in {time.perf_counter() - start:.1f}s", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_batches(out)
    num_batches = min(args.max_batches or len(batch_list), len(batch_list))
    todo = [b for b in range(num_batches) if b % args.num_shards == args.shard and b not in done]
    model = load_causal_lm(args.target, torch.float32, "cpu").requires_grad_(False)
    pad_id, eos_id = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
    start, new_tokens = time.perf_counter(), 0
    with out.open("a", encoding="utf-8") as handle:
        for i, records in enumerate(generate_records(model, batch_list, gen_spec, pad_id, eos_id, args.seed, todo)):
            handle.write("".join(json.dumps(r) + "\n" for r in records))
            handle.flush()
            new_tokens += sum(len(r["ids"]) - r["prompt_len"] for r in records)
            elapsed = time.perf_counter() - start
            print(f"batch {i + 1}/{len(todo)} new_tokens={new_tokens} {new_tokens / elapsed:.0f} tok/s "
                  f"elapsed={elapsed:.0f}s", flush=True)
    print(json.dumps(summarize(out)))


if __name__ == "__main__":
    main()

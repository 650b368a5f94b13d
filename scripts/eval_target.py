"""Evaluate the demo target and what a drafter step costs next to it: held-out loss on the documented
split, repetition in greedy completions of code prompts, and forward-pass time per number of positions
for the target, the Falcon drafter and the AR draft model (models/demo/README.md quotes its output).

| flag | default | meaning |
|---|---|---|
| `--target` | `models/demo/target` | target HF checkpoint directory (its tokenizer is used) |
| `--falcon` | `models/demo/falcon` | Falcon drafter directory (`""` = skip) |
| `--draft` | `models/demo/draft` | AR draft model directory (`""` = skip) |
| `--corpus` | `stdlib` | corpus whose held-out split gives the loss windows |
| `--seq-len` / `--eval-windows` | 256 / 64 | held-out windows, exactly as the training scripts measure them |
| `--prompts` | the bench's 8 held-out code prompts | JSONL with a `prompt` field |
| `--max-new-tokens` | 128 | greedy tokens per prompt for the distinct-4-gram ratio |
| `--context-len` | 200 | cached context before each timed forward |
| `--repeats` | 10 | timed forwards per cell (median) |
| `--json` | none | write everything as JSON here |
| `--num-threads` | 1 | torch intra-op threads for the timings (one core, as a verifier or drafter gets) |
"""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

import torch
from transformers import AutoTokenizer

from runtime.bench.costs import forward_costs
from runtime.bench.prompts import SHIPPED_PROMPTS, load_prompts
from workers.hf_model import load_causal_lm
from workers.training.corpus import read_corpus
from workers.training.lm import greedy_completion, held_out_loss
from workers.training.quality import distinct_ngram_ratio, mean_distinct_ngram_ratio
from workers.training.tokens import encode_documents, encode_stream, eval_window_starts, eval_windows, stream_owners


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--target", default="models/demo/target")
    parser.add_argument("--falcon", default="models/demo/falcon", help="'' = skip")
    parser.add_argument("--draft", default="models/demo/draft", help="'' = skip")
    parser.add_argument("--corpus", default="stdlib")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--prompts", default=str(SHIPPED_PROMPTS), help="JSONL with a 'prompt' field")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--context-len", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--num-threads", type=int, default=1)
    return parser


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Held-out loss and greedy completions of the prompts with their distinct-4-gram ratios."""
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    model = load_causal_lm(args.target)
    docs = read_corpus(args.corpus, "held_out")
    stream = encode_stream(tokenizer, docs)
    windows = eval_windows(stream, args.seq_len, args.eval_windows)
    by_document = loss_by_document(model, windows, [d.name for d in docs],
                                   [len(ids) for ids in encode_documents(tokenizer, docs)],
                                   eval_window_starts(stream.numel(), args.seq_len, args.eval_windows))
    samples, completions = [], []
    for prompt in load_prompts(args.prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        new = greedy_completion(model, ids, args.max_new_tokens)
        completions.append(new)
        samples.append({"prompt": prompt, "completion": tokenizer.decode(new), "num_new": len(new),
                        "distinct_4": distinct_ngram_ratio(new, 4)})
    return {"held_out": held_out_loss(model, windows), "held_out_by_document": by_document,
            "mean_distinct_4": mean_distinct_ngram_ratio(completions, 4), "samples": samples}


def loss_by_document(model: Any, windows: torch.Tensor, names: list[str], lengths: list[int],
                     starts: list[int]) -> list[dict[str, Any]]:
    """The held-out windows' mean loss grouped by the document each window starts in, largest share first."""
    groups: dict[str, list[float]] = {}
    for window, owner in zip(windows, stream_owners(lengths, starts), strict=True):
        groups.setdefault(names[owner], []).append(held_out_loss(model, window[None])["loss"])
    rows = [{"document": name, "windows": len(losses), "loss": sum(losses) / len(losses)}
            for name, losses in groups.items()]
    return sorted(rows, key=lambda r: -r["windows"])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(2)
    result = quality(args)
    print(f"held-out loss {result['held_out']['loss']:.3f} nats/token (perplexity {result['held_out']['ppl']:.1f}); "
          f"mean distinct-4-gram ratio {result['mean_distinct_4']:.3f} over {len(result['samples'])} prompts "
          f"x up to {args.max_new_tokens} new tokens (a completion that ends within 3 tokens is left out)")
    top = result["held_out_by_document"][0]
    rest = result["held_out_by_document"][1:]
    rest_loss = sum(r["loss"] * r["windows"] for r in rest) / max(sum(r["windows"] for r in rest), 1)
    print(f"  {top['document']}: {top['windows']} windows, loss {top['loss']:.3f}; the other "
          f"{len(rest)} documents: {sum(r['windows'] for r in rest)} windows, loss {rest_loss:.3f}")
    for sample in result["samples"]:
        print(f"  {sample['distinct_4']:.2f}  {sample['num_new']:3d} tokens  {sample['completion'][:70]!r}")
    torch.set_num_threads(args.num_threads)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    context_text = "\n".join(load_prompts(args.prompts))
    context = tokenizer(context_text, add_special_tokens=False)["input_ids"][: args.context_len]
    costs = forward_costs(args.target, args.falcon or None, args.draft or None, context, args.repeats)
    print(f"\nforward pass after {len(context)} cached tokens, {args.num_threads} thread(s), "
          f"median of {args.repeats} (ms; drafter / target)")
    for row in costs:
        ratio = f"  ({row['ratio_to_target']:.2f})" if "ratio_to_target" in row else ""
        print(f"  {row['what']:<32} {row['ms']:7.2f}{ratio}")
    if args.json:
        blob = {"machine": platform.platform(), "processor": platform.processor(), "args": vars(args),
                **result, "forward_costs": costs}
        with open(args.json, "w") as handle:
            json.dump(blob, handle, indent=2)


if __name__ == "__main__":
    main()

"""Self-distillation data (as Falcon and EAGLE train): prompts cut at line boundaries from the training split
of local Python sources, continued by the target itself in left-padded batches, stored as token ids so that
nothing changes in re-tokenization. scripts/gen_distill_data.py is the command line; models/demo/README.md
documents the run.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workers.training.corpus import is_held_out, source_files
from workers.training.tokens import encode_texts

OPENING = re.compile(r"^\s*(async def |def |class )")  # where a short, hand-written-like prompt starts


@dataclass(frozen=True)
class PromptSpec:
    """How prompts are cut: most are min..max tokens from a random line; `short_share` of them open at a
    def/class line and hold short_min..min tokens, like a hand-written prompt."""

    min_tokens: int = 32
    max_tokens: int = 128
    short_share: float = 0.3
    short_min_tokens: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.short_min_tokens <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 0 < short_min_tokens <= min_tokens <= max_tokens, got {self!r}")
        if not 0 <= self.short_share <= 1:
            raise ValueError(f"short_share must be in [0, 1], got {self.short_share!r}")


@dataclass(frozen=True)
class Prompt:
    name: str  # the source file's path relative to its root: what the held-out hash is taken of
    source: str  # "stdlib" or "site-packages"
    ids: tuple[int, ...]


@dataclass(frozen=True)
class GenerationSpec:
    max_new_tokens: int = 160
    batch_size: int = 64
    sampled_share: float = 0.25  # batches decoded by sampling at `temperature`; the rest greedy
    temperature: float = 0.8

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {self!r}")
        if not 0 <= self.sampled_share <= 1 or self.temperature <= 0:
            raise ValueError(f"need sampled_share in [0, 1] and temperature > 0, got {self!r}")

    def is_sampled(self, batch_index: int) -> bool:
        """Spread the sampled batches evenly: batch b is sampled when floor((b+1)·share) > floor(b·share)."""
        return int((batch_index + 1) * self.sampled_share) > int(batch_index * self.sampled_share)


def training_files(sources: Sequence[str]) -> list[tuple[str, Path, str]]:
    """(source, file, name) of every training-split *.py file of the named sources."""
    files = []
    for source in sources:
        root, paths = source_files(source)
        for path in paths:
            name = path.relative_to(root).as_posix()
            if not is_held_out(name):
                files.append((source, path, name))
    return files


def cut_prompts(tokenizer: Any, sources: Sequence[str], num_prompts: int, spec: PromptSpec,
                seed: int = 0) -> list[Prompt]:
    """`num_prompts` prompts, each from a source drawn uniformly, then a training file drawn uniformly."""
    rng = random.Random(seed)
    by_source: dict[str, list[tuple[Path, str]]] = {}
    for source, path, name in training_files(sources):
        by_source.setdefault(source, []).append((path, name))
    if not by_source:
        raise ValueError(f"no training-split files in {list(sources)}")
    prompts: list[Prompt] = []
    while len(prompts) < num_prompts:
        source = rng.choice(sorted(by_source))
        path, name = rng.choice(by_source[source])
        ids = _cut_one(tokenizer, _read_lines(path), spec, rng)
        if ids is not None:
            prompts.append(Prompt(name, source, tuple(ids)))
    return prompts


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (UnicodeDecodeError, OSError):
        return []


def _cut_one(tokenizer: Any, lines: list[str], spec: PromptSpec, rng: random.Random) -> list[int] | None:
    """Whole lines from a random start until the drawn length; None when the file cannot give one."""
    is_short = rng.random() < spec.short_share
    starts = [i for i, line in enumerate(lines) if OPENING.match(line)] if is_short else \
        [i for i, line in enumerate(lines) if line.strip()]
    if not starts:
        return None
    low, high = (spec.short_min_tokens, spec.min_tokens) if is_short else (spec.min_tokens, spec.max_tokens)
    want = rng.randint(low, high)
    start = rng.choice(starts)
    counts = [len(ids) for ids in encode_texts(tokenizer, lines[start:start + want])]  # ≥ 1 token per line
    end, total = start, 0
    while end - start < len(counts) and total + counts[end - start] <= want:
        total += counts[end - start]
        end += 1
    if end == start:
        return None
    ids = encode_texts(tokenizer, ["".join(lines[start:end])])[0]
    return ids if low <= len(ids) <= high else None


def batches(prompts: Sequence[Prompt], batch_size: int) -> list[list[Prompt]]:
    """Prompts sorted by length (little padding), cut into batches; deterministic for a given list."""
    ordered = sorted(prompts, key=lambda p: len(p.ids))
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


@torch.no_grad()
def continue_batch(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_id: int, eos_id: int,
                   temperature: float | None = None) -> list[list[int]]:
    """Each prompt's continuation by `model` (greedy, or sampled at `temperature` from the full distribution),
    left-padded into one batch; cut after the first EOS (kept)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} \
        if temperature is not None else {"do_sample": False}
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         pad_token_id=pad_id, eos_token_id=eos_id, **sampling)
    rows = []
    for row in out[:, width:].tolist():
        rows.append(row[:row.index(eos_id) + 1] if eos_id in row else row)
    return rows


def generate_records(model: Any, batch_list: Sequence[Sequence[Prompt]], spec: GenerationSpec, pad_id: int,
                     eos_id: int, seed: int, indices: Sequence[int]) -> Iterator[list[dict[str, Any]]]:
    """The records of each batch in `indices` (one list per batch); sampling is seeded by (seed, batch)."""
    for b in indices:
        torch.manual_seed(seed * 1_000_003 + b)
        temperature = spec.temperature if spec.is_sampled(b) else None
        batch = batch_list[b]
        continuations = continue_batch(model, [p.ids for p in batch], spec.max_new_tokens, pad_id, eos_id,
                                       temperature)
        pairs = zip(batch, continuations, strict=True)
        yield [{"id": p.name, "source": p.source, "ids": [*p.ids, *cont], "prompt_len": len(p.ids),
                "sampled": temperature is not None, "batch": b} for p, cont in pairs if cont]


def done_batches(path: Path) -> set[int]:
    """Batches already written to `path` (a resumed run skips them)."""
    if not path.exists():
        return set()
    with path.open(encoding="utf-8") as handle:
        return {json.loads(line)["batch"] for line in handle if line.strip()}


def merge_shards(shards: Sequence[Path], out: Path) -> int:
    """Write the shards' records to `out` ordered by batch (a shard's order kept within a batch); returns the
    record count. The training stream follows this order, so merged shards train like one process's file."""
    records = []
    for shard in shards:
        with shard.open(encoding="utf-8") as handle:
            records += [json.loads(line) for line in handle if line.strip()]
    records.sort(key=lambda r: r["batch"])
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return len(records)


def summarize(path: Path) -> dict[str, Any]:
    """Record, token and source counts of a generated JSONL file."""
    stats: dict[str, Any] = {"records": 0, "tokens": 0, "prompt_tokens": 0, "new_tokens": 0,
                             "sampled_records": 0, "by_source": {}, "files": set()}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            new = len(record["ids"]) - record["prompt_len"]
            stats["records"] += 1
            stats["tokens"] += len(record["ids"])
            stats["prompt_tokens"] += record["prompt_len"]
            stats["new_tokens"] += new
            stats["sampled_records"] += int(record["sampled"])
            stats["by_source"][record["source"]] = stats["by_source"].get(record["source"], 0) + 1
            stats["files"].add((record["source"], record["id"]))
    stats["distinct_files"] = len(stats.pop("files"))
    return stats

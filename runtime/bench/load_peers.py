"""The peers under load, in this process: `hf-generate` on left-padded batches of c prompts (one `generate`
call per batch) and `hf-generate-batch`, transformers' continuous batching (`generate_batch`) with at most c
requests per batch; plus the exactness reference, one batch-1 greedy `generate` per prompt.

Timing. hf-generate: every row of a batch starts with the call; its time to first token is when the
prefill + first decoding step handed its tokens to a streamer, and the other max_new_tokens - 1 tokens
count as one chunk at the end of the call, so ITL = (total - TTFT) / (tokens - 1). hf-generate-batch: its
per-token timestamps (`record_timestamps`), from when the scheduler took the request in; the level's wall
time runs from the requests being added (after the manager has started) to the last token.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from runtime.bench.load_metrics import batches
from runtime.bench.load_records import LevelRun, LoadRecord, LoadSettings
from runtime.bench.machine import pinned
from runtime.bench.peers import PeerModels
from runtime.bench.sampler import ProcessSampler

log = logging.getLogger(__name__)
LOAD_PEERS = ("hf-generate", "hf-generate-batch")
PAGE_SIZE = 256  # tokens per KV page of continuous batching (its default)
CB_ERRORS = (RuntimeError, ValueError, TypeError, NotImplementedError, AttributeError, ImportError, KeyError)


def references(models: PeerModels, settings: LoadSettings) -> list[list[int]]:
    """Batch-1 greedy `generate` of every prompt: what every greedy output must equal."""
    return [padded_generate(models, [prompt], settings, settings.max_new_tokens)[0][0] for prompt in settings.prompts]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Rows of equal length, padded on the left, and their attention masks (0 on padding)."""
    width = max(len(p) for p in prompts)
    return ([[pad_id] * (width - len(p)) + p for p in prompts],
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts])


class StepClock(BaseStreamer):
    """When `generate` handed over tokens: first the prompt, then one `put` per decoding step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def padded_generate(models: PeerModels, prompts: list[list[int]], settings: LoadSettings,
                    max_new_tokens: int) -> tuple[list[list[int]], float, float]:
    """One `generate` call on the left-padded batch: each row's new tokens, time to first token, total time."""
    pad_id = int(models.target.generation_config.pad_token_id or 0)
    rows, mask = left_pad(prompts, pad_id)
    ids = torch.tensor(rows, device=models.device)  # [B, S]
    sampling: dict[str, Any] = {"do_sample": False}
    if not settings.is_greedy:
        torch.manual_seed(settings.seed or 0)
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": 1.0, "top_k": 0}
    clock = StepClock()
    start = time.perf_counter()
    out = models.target.generate(ids, attention_mask=torch.tensor(mask, device=models.device),
                                 max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, pad_token_id=pad_id,
                                 streamer=clock, **sampling)
    total_s = time.perf_counter() - start
    first_s = clock.times[1] - start if len(clock.times) > 1 else total_s
    return [[int(t) for t in row] for row in out[:, ids.shape[1]:].tolist()], first_s, total_s


def run_padded(models: PeerModels, settings: LoadSettings, cores: list[int],
               on_request: Callable[[], None]) -> list[LevelRun]:
    """hf-generate at every level: the level's requests in consecutive batches of c, one call per batch."""
    placement = {"device": models.device, "cores": cores, "threads": len(cores)}
    runs = []
    with pinned(cores, len(cores)):
        padded_generate(models, settings.prompts[:1], settings, settings.warmup_tokens)
        on_request()
        for concurrency in settings.levels:
            indices = settings.requests_at(concurrency)
            records = []
            with ProcessSampler({"bench": os.getpid()}) as sampler:
                start = time.perf_counter()
                for batch in batches(len(indices), concurrency):
                    chosen = [indices[i] for i in batch]
                    tokens, first_s, total_s = padded_generate(models, [settings.prompts[i] for i in chosen],
                                                               settings, settings.max_new_tokens)
                    records += [_two_chunks(i, row, first_s, total_s) for i, row in zip(chosen, tokens, strict=True)]
                    for _ in chosen:
                        on_request()
                wall_s = time.perf_counter() - start
            runs.append(LevelRun("hf-generate", "peer", concurrency, placement, records, wall_s,
                                 peak_rss_mb=sampler.peak_rss_mb))
    return runs


def _two_chunks(prompt_index: int, tokens: list[int], first_s: float, total_s: float) -> LoadRecord:
    chunk_s, sizes = ([first_s, total_s], [1, len(tokens) - 1]) if len(tokens) > 1 else ([first_s], [len(tokens)])
    return LoadRecord(prompt_index, tokens, chunk_s, sizes)


def run_continuous(models: PeerModels, settings: LoadSettings, cores: list[int],
                   on_request: Callable[[], None]) -> list[LevelRun]:
    """hf-generate-batch at every level; a failure (e.g. no CPU support) becomes the error of its levels."""
    placement = {"device": models.device, "cores": cores, "threads": len(cores)}
    runs: list[LevelRun] = []
    with pinned(cores, len(cores)):
        try:
            continuous_generate(models, settings, [0], 1, settings.warmup_tokens)
            on_request()
            for concurrency in settings.levels:
                with ProcessSampler({"bench": os.getpid()}) as sampler:
                    records, wall_s = continuous_generate(models, settings, settings.requests_at(concurrency),
                                                          concurrency, settings.max_new_tokens)
                for _ in records:
                    on_request()
                runs.append(LevelRun("hf-generate-batch", "peer", concurrency, placement, records, wall_s,
                                     peak_rss_mb=sampler.peak_rss_mb))
        except CB_ERRORS as exc:  # transformers' continuous batching, not ours: its failure is a row
            log.exception("hf-generate-batch failed")
            runs += [LevelRun("hf-generate-batch", "peer", c, placement, error=f"{type(exc).__name__}: {exc}")
                     for c in settings.levels[len(runs):]]
    return runs


def continuous_generate(models: PeerModels, settings: LoadSettings, indices: list[int], concurrency: int,
                        max_new_tokens: int) -> tuple[list[LoadRecord], float]:
    """All requests handed to `generate_batch` at once, at most `concurrency` per batch; records and wall time."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    prompts = [settings.prompts[i] for i in indices]
    sampling = {} if settings.is_greedy else {"do_sample": True, "temperature": settings.temperature, "top_p": 1.0,
                                              "top_k": 0}
    make_config: Any = GenerationConfig  # untyped in transformers' stubs
    generation = make_config(max_new_tokens=max_new_tokens, eos_token_id=-1,  # -1: EOS disabled
                             pad_token_id=int(models.target.generation_config.pad_token_id or 0), **sampling)
    num_blocks, max_batch_tokens = cache_size(concurrency, max(len(p) for p in prompts) + max_new_tokens,
                                              sum(len(p) for p in prompts[:concurrency]))
    config = ContinuousBatchingConfig(max_requests_per_batch=concurrency, seed=settings.seed, page_size=PAGE_SIZE,
                                      num_blocks=num_blocks, max_batch_tokens=max_batch_tokens)
    outputs = list(models.target.generate_batch(inputs=prompts, generation_config=generation,
                                                continuous_batching_config=config, record_timestamps=True,
                                                warmup=models.device != "cpu").values())
    failed = [o.error for o in outputs if o.error is not None]
    if len(outputs) != len(prompts) or failed:
        raise RuntimeError(f"generate_batch returned {len(outputs)} of {len(prompts)} requests"
                           + (f"; first error: {failed[0]}" if failed else ""))
    records = [LoadRecord(i, [int(t) for t in o.generated_tokens], [t - o.lifespan[0] for t in o.timestamps or []],
                          [1] * len(o.timestamps or [])) for i, o in zip(indices, outputs, strict=True)]
    wall_s = max(o.timestamps[-1] for o in outputs if o.timestamps) - min(o.created_time for o in outputs)
    return records, wall_s


def cache_size(concurrency: int, max_tokens: int, first_prefill_tokens: int,
               page_size: int = PAGE_SIZE) -> tuple[int, int]:
    """KV blocks for `concurrency` requests of up to `max_tokens` each, and tokens per batch enough to prefill
    the first wave at once. Given explicitly: left to infer them on CPU, transformers spent half a minute."""
    return concurrency * math.ceil(max_tokens / page_size) + 1, max(first_prefill_tokens, 256)

"""The peers a user would pick instead, in this process: transformers' greedy/sampled `generate`,
prompt lookup (`prompt_lookup_num_tokens`) and assisted generation (`assistant_model`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from runtime.bench.machine import pinned
from runtime.bench.records import BenchSettings, MethodRun, RequestRecord
from runtime.bench.sampler import ProcessSampler

PEERS = ("hf-generate", "hf-prompt-lookup", "hf-assisted")
ONE_CORE = " (1 core)"
PROMPT_LOOKUP_TOKENS = 10


@dataclass(frozen=True)
class PeerModels:
    target: Any
    assistant: Any | None  # the `model` drafter's checkpoint, for hf-assisted
    device: str


def load_peer_models(target_dir: str, assistant_dir: str | None, dtype: torch.dtype, device: str) -> PeerModels:
    from workers.hf_model import load_causal_lm

    target = load_causal_lm(target_dir, dtype, device)
    target.generation_config.eos_token_id = None  # exactly max_new_tokens, as Tandem with ignore_eos
    assistant = load_causal_lm(assistant_dir, dtype, device) if assistant_dir else None
    if assistant is not None:
        assistant.generation_config.eos_token_id = None
    return PeerModels(target, assistant, device)


def generate_kwargs(peer: str, models: PeerModels) -> dict[str, Any]:
    """What distinguishes each peer's `generate` call."""
    if peer == "hf-prompt-lookup":
        return {"prompt_lookup_num_tokens": PROMPT_LOOKUP_TOKENS}
    if peer == "hf-assisted":
        if models.assistant is None:
            raise ValueError("hf-assisted needs an assistant model (--draft)")
        return {"assistant_model": models.assistant}
    if peer != "hf-generate":
        raise ValueError(f"unknown peer {peer!r}; known: {', '.join(PEERS)}")
    return {}


def hf_generate(models: PeerModels, prompt_ids: list[int], settings: BenchSettings, max_new_tokens: int,
                extra: dict[str, Any]) -> list[int]:
    sampling: dict[str, Any] = {"do_sample": False}
    if not settings.is_greedy:
        torch.manual_seed(settings.seed or 0)
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": 1.0, "top_k": 0}
    ids = torch.tensor([prompt_ids], device=models.device)
    out = models.target.generate(ids, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                 pad_token_id=models.target.generation_config.pad_token_id, **sampling, **extra)
    return [int(t) for t in out[0, len(prompt_ids):].tolist()]


def run_peer(name: str, models: PeerModels, settings: BenchSettings, cores: list[int],
             on_request: Callable[[], None]) -> MethodRun:
    """One peer on `cores` with as many torch threads (on GPU the cores only host the Python side)."""
    peer = name.removesuffix(ONE_CORE)
    extra = generate_kwargs(peer, models)
    run = MethodRun(name, "peer", {"device": models.device, "cores": cores, "threads": len(cores)})
    with pinned(cores, len(cores)), ProcessSampler({"bench": os.getpid()}) as sampler:
        hf_generate(models, settings.prompts[0], settings, settings.warmup_tokens, extra)
        on_request()
        sampler.start_cpu_window()
        for _ in range(settings.repeats):
            records = []
            for prompt in settings.prompts:
                start = time.perf_counter()
                tokens = hf_generate(models, prompt, settings, settings.max_new_tokens, extra)
                records.append(RequestRecord(tokens, time.perf_counter() - start))
                on_request()
            run.passes.append(records)
    run.peak_rss_mb, run.cpu_util = sampler.peak_rss_mb, sampler.cpu_util
    return run

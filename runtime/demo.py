"""What the demo measures (scripts/demo.py prints it): each method gets the same warm-up, the same
prompts and exactly `max_new_tokens` per prompt (end-of-text ignored, as in the bench, so every method
does the same work and enough of it); only generation is timed (printing happens afterwards, the
completion shown up to its first end-of-text); HF `generate` runs on the deployment's cores with as many
threads (the bench's equal-hardware rule).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.bench.prompts import SHIPPED_PROMPTS, load_prompts
from runtime.client import Client
from runtime.config import TandemConfig
from runtime.launch import Deployment, config_variant

# the bench's held-out prompts (runtime/bench/prompts.jsonl: cut by a fixed rule from standard-library files
# no model here was trained on), so the demo and `scripts/bench.py` measure the same thing
DEMO_PROMPTS = load_prompts(SHIPPED_PROMPTS)
NUM_SHOWN = 3  # completions printed; every prompt is measured
WARMUP_TOKENS = 16


@dataclass
class Measured:
    """One method over the prompts: outputs, generation seconds (timed part only), τ when speculative."""

    label: str
    mode: str
    outputs: list[list[int]]
    texts: list[str]
    seconds: float
    tau: float = 1.0

    @property
    def tokens_per_s(self) -> float:
        return sum(len(o) for o in self.outputs) / max(self.seconds, 1e-9)


def measure_deployment(config_path: str | Path, prompts: list[str], max_new_tokens: int) -> Measured:
    """Start the deployment, warm it up with one short request, then time each prompt (no printing)."""
    with Deployment(str(config_path)) as deployment:
        deployment.start()
        mode = deployment.config.speculation.mode
        with Client(deployment.config.coordinator.client_address, timeout_s=300) as client:
            client.generate(prompts[0], max_new_tokens=WARMUP_TOKENS)
            before = client.metrics()
            outputs, seconds = [], 0.0
            for prompt in prompts:
                start = time.perf_counter()
                chunks = list(client.stream(prompt, max_new_tokens=max_new_tokens, ignore_eos=True))
                seconds += time.perf_counter() - start
                outputs.append([t for c in chunks for t in c.token_ids])
            texts = shown_texts(str(config_path), outputs)
            after = client.metrics()
    return Measured(mode, mode, outputs, texts, seconds, _tau(before, after))


def _tau(before: dict[str, Any], after: dict[str, Any]) -> float:
    """τ of the timed requests alone (the warm-up left out)."""
    verifications = after.get("num_verifications", 0) - before.get("num_verifications", 0)
    committed = after.get("num_committed", 0) - before.get("num_committed", 0)
    return committed / verifications if verifications else 1.0


@contextlib.contextmanager
def variant(config_path: str, mode: str) -> Iterator[Path]:
    """The deployment YAML with another speculation mode (fresh ports), for as long as it is needed."""
    with tempfile.TemporaryDirectory() as tmp:
        yield config_variant(config_path, Path(tmp), mode)


def generate_cores(config: TandemConfig) -> list[int]:
    """The cores the deployment's workers are pinned to (all of them when none is)."""
    import os

    cores: set[int] = set(config.verifier.cpu_affinity or [])
    if config.drafter is not None:
        cores |= set(config.drafter.cpu_affinity or [])
    return sorted(cores) or sorted(os.sched_getaffinity(0))


def measure_generate(config: TandemConfig, prompts: list[str], max_new_tokens: int) -> Measured:
    """HF `generate` (greedy, the target's own stopping rule) in this process on the deployment's cores."""
    import torch

    from runtime.bench.machine import pinned
    from runtime.builders import load_tokenizer
    from workers.hf_model import load_causal_lm

    tokenizer = load_tokenizer(config.verifier.model)
    model = load_causal_lm(config.verifier.model, config.verifier.torch_dtype, config.verifier.device)
    cores = generate_cores(config)
    outputs, seconds = [], 0.0
    with pinned(cores, len(cores)), torch.inference_mode():
        def run(prompt: str, num: int) -> list[int]:
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            out = model.generate(torch.tensor([ids], device=config.verifier.device), max_new_tokens=num,
                                 min_new_tokens=num, eos_token_id=None, do_sample=False,
                                 pad_token_id=model.generation_config.pad_token_id)
            return [int(t) for t in out[0, len(ids):].tolist()]

        run(prompts[0], WARMUP_TOKENS)
        for prompt in prompts:
            start = time.perf_counter()
            ids = run(prompt, max_new_tokens)
            seconds += time.perf_counter() - start
            outputs.append(ids)
    label = f"cores {','.join(map(str, cores))}, {len(cores)} threads"
    return Measured(label, "generate", outputs, shown_texts(config, outputs), seconds)


def shown_texts(config: TandemConfig | str, outputs: list[list[int]]) -> list[str]:
    """Each output as text, up to its first end-of-text token (what a user would have been shown)."""
    from runtime.builders import load_tokenizer, read_eos_ids

    model = (TandemConfig.load(config) if isinstance(config, str) else config).verifier.model
    tokenizer, eos = load_tokenizer(model), read_eos_ids(model)
    cut = [next((i for i, t in enumerate(ids) if t in eos), len(ids)) for ids in outputs]
    return [tokenizer.decode(ids[:n]) for ids, n in zip(outputs, cut, strict=True)]


def describe(config: TandemConfig) -> str:
    """One line per model: its shape and, for a shipped demo model, its training report's headline."""
    def read(path: Path) -> dict[str, Any]:
        return json.loads(path.read_text()) if path.is_file() else {}

    target = Path(config.verifier.model)
    shape = read(target / "config.json")
    report = read(target / "training_report.json")
    arch = shape.get("architectures", ["?"])[0]
    layers, hidden = shape.get("num_hidden_layers"), shape.get("hidden_size")
    line = f"target   {_short(target)}: {arch}, {layers} layers, hidden {hidden}"
    if report.get("held_out_loss"):
        tokens = report.get("tokens_seen_total", report["tokens_seen"])  # fine-tuned: with its pre-training
        line += (f", {report['parameters'] / 1e6:.1f} M parameters, {tokens / 1e6:.1f} M training "
                 f"tokens, held-out loss {report['held_out_loss']:.2f} nats/token")
    lines = [line]
    if config.drafter is not None:
        drafter = Path(config.drafter.model) if config.drafter.model else None
        falcon = read(drafter / "falcon_config.json") if drafter else {}
        what = (f"Falcon, {falcon['num_layers']} layers, k = {falcon['block_size']} tokens per forward"
                if falcon else config.drafter.kind)
        lines.append(f"drafter  {_short(drafter) if drafter else config.drafter.kind}: {what}")
    return "\n".join(lines)


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)

"""What `speculation.target_candidates` (MCSD's target-initialised candidates, lossy) buys and costs: τ and
virtual tokens/s from the deterministic simulation (runtime/bench/simulate.py), and how far the output
drifts from the target's greedy output: the share of outputs equal to it, the tokens before the first
difference, and the target's own loss (mean negative log-likelihood per token) on the generated text.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from runtime.bench.simulate import SimResult, Timing, simulate


def config_with_candidates(config_path: str, width: int, out_dir: Path) -> Path:
    """The YAML with `speculation.target_candidates: width` (model paths absolute)."""
    from runtime.config import TandemConfig

    config = TandemConfig.load(config_path)
    data = yaml.safe_load(Path(config_path).read_text())
    data.setdefault("speculation", {})["target_candidates"] = width
    data["verifier"]["model"] = config.verifier.model
    if config.drafter is not None and config.drafter.model is not None:
        data["drafter"]["model"] = config.drafter.model
    path = out_dir / f"candidates-{width}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def target_loss(model: Any, prompt: Sequence[int], output: Sequence[int]) -> float:
    """Mean negative log-likelihood of `output` after `prompt` under the target (nats per token)."""
    ids = torch.tensor([list(prompt) + list(output)])
    with torch.inference_mode():
        logits = model(ids).logits[0, len(prompt) - 1: -1].float()
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(list(output))))


def first_difference(a: Sequence[int], b: Sequence[int]) -> int:
    """Tokens before the first position where `a` and `b` differ (their common length when none does)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


@dataclasses.dataclass
class CandidateRow:
    width: int
    result: SimResult
    equal_share: float
    tokens_before_difference: float
    loss: float
    num_off_top: int


def evaluate(config_path: str, prompts: Sequence[list[int]], max_new_tokens: int, widths: Sequence[int],
             mode: str | None = None, timing: Timing | None = None) -> list[CandidateRow]:
    """One simulated run per width (0 = exact, the reference) over the same prompts."""
    from runtime.config import TandemConfig
    from workers.hf_model import load_causal_lm

    model = load_causal_lm(TandemConfig.load(config_path).verifier.model)
    rows: list[CandidateRow] = []
    reference: list[list[int]] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        for width in [0, *[w for w in widths if w != 0]]:
            path = config_with_candidates(config_path, width, Path(tmp))
            result = simulate(str(path), prompts, max_new_tokens, timing, mode=mode)
            reference = reference or result.outputs
            equal = [out == ref for out, ref in zip(result.outputs, reference, strict=True)]
            before = [first_difference(out, ref) for out, ref in zip(result.outputs, reference, strict=True)]
            losses = [target_loss(model, p, out) for p, out in zip(prompts, result.outputs, strict=True)]
            rows.append(CandidateRow(width, result, sum(equal) / len(equal), sum(before) / len(before),
                                     sum(losses) / len(losses), int(result.metrics.get("num_off_top", 0))))
    return rows

"""Benchmark-only oracle drafter: proposes the target's own greedy continuation, right with a chosen
per-token probability, so a random-weight target of a realistic shape can be benchmarked with a
drafter of known quality and cost (scale mode of `scripts/bench.py`).

The reference continuations (prompt + the target's greedy tokens) come from a JSON file the bench
writes after running transformers' `generate`. Each drafter step adds one level below the deepest
main-chain node: the main proposal (rank 0) is the reference token when u(seed, position) < p, else a
different token; `top_k - 1` alternatives are other wrong tokens (they make the verified tree as wide
as a real drafter's). Deterministic per (seed, reference, position), so runs are reproducible; a
wrong token is never the reference token. Off the reference (sampling, or a near-tie diverging) it
proposes nothing. `step_ms` sleeps in every step, standing in for a drafter forward of that cost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from workers.drafters.base import Drafter, DraftSession
from workers.sampling import position_uniforms
from workers.tree import ROOT
from workers.tree_policy import TreeConfig

MAIN_PROB = 0.9  # drafter probability of the main proposal; the alternatives share the rest
_SEED_STRIDE = 1_000_003


class OracleDrafter(Drafter):
    def __init__(self, references: Sequence[Sequence[int]], vocab_size: int, accept_prob: float, seed: int = 0,
                 step_ms: float = 0.0) -> None:
        if not 0.0 <= accept_prob <= 1.0:
            raise ValueError(f"oracle accept_prob must be in [0, 1], got {accept_prob!r}")
        if vocab_size < 2:
            raise ValueError(f"oracle vocab_size must be >= 2, got {vocab_size!r}")
        if step_ms < 0:
            raise ValueError(f"oracle step_ms must be >= 0, got {step_ms!r}")
        self.references = [[int(t) for t in ref] for ref in references]
        self.vocab_size, self.accept_prob, self.seed, self.step_ms = vocab_size, accept_prob, seed, step_ms

    @classmethod
    def from_file(cls, path: str, vocab_size: int, accept_prob: float, seed: int = 0,
                  step_ms: float = 0.0) -> OracleDrafter:
        """References from JSON: a list of token-id lists (prompt + greedy continuation)."""
        data = json.loads(Path(path).read_text())
        if not isinstance(data, list) or not all(isinstance(ref, list) for ref in data):
            raise ValueError(f"{path}: an oracle reference file is a JSON list of token-id lists")
        return cls(data, vocab_size, accept_prob, seed, step_ms)

    def open(self, committed_ids: Sequence[int], config: TreeConfig,
             features: torch.Tensor | None = None) -> DraftSession:
        return OracleSession(committed_ids, config, self)

    def find(self, committed_ids: Sequence[int]) -> int | None:
        """Index of the first reference that starts with `committed_ids` and goes beyond it."""
        n = len(committed_ids)
        for index, ref in enumerate(self.references):
            if len(ref) > n and ref[:n] == list(committed_ids):
                return index
        return None

    def is_right(self, reference: int, positions: torch.Tensor) -> torch.Tensor:
        """[N] bool: whether the main proposal at these sequence positions is the reference token."""
        return position_uniforms(self.seed * _SEED_STRIDE + reference, positions) < self.accept_prob

    def proposals(self, reference: int, position: int, k: int) -> list[int]:
        """`k` distinct tokens for `position`: the main proposal first, then wrong alternatives."""
        right = self.references[reference][position]
        is_right = bool(self.is_right(reference, torch.tensor([position]))[0])
        k = min(k, self.vocab_size - 1 + int(is_right))
        shift = position_uniforms(self.seed * _SEED_STRIDE + reference + 1, torch.tensor([position]))[0]
        start = int(float(shift) * (self.vocab_size - 1))
        wrong = [(right + 1 + (start + j) % (self.vocab_size - 1)) % self.vocab_size for j in range(k)]
        if is_right:
            return [right, *wrong[: k - 1]]
        return wrong[:k]


class OracleSession(DraftSession):
    def __init__(self, committed_ids: Sequence[int], config: TreeConfig, oracle: OracleDrafter) -> None:
        super().__init__(committed_ids, config)
        self.oracle = oracle
        self.reference = oracle.find(self.committed_ids)

    def grow(self, max_expansions: int | None = None) -> bool:
        reference = self.reference
        if reference is None:
            return False
        k = self.config.top_k
        levels = self.tree.max_depth
        position = len(self.committed_ids) + levels  # sequence position of the new level's tokens
        if (levels >= self.config.living_depth or self.tree.num_nodes + k > self.config.living_cap
                or position >= len(self.oracle.references[reference])):
            return False
        if self.oracle.step_ms:
            time.sleep(self.oracle.step_ms / 1000.0)
        tokens = self.oracle.proposals(reference, position, k)
        probs = [MAIN_PROB] + [(1 - MAIN_PROB) / max(len(tokens) - 1, 1)] * (len(tokens) - 1)
        parent = self._main_leaf(reference, levels)
        self.tree = self.tree.add(torch.full((len(tokens),), parent), torch.tensor(tokens), torch.tensor(probs))
        return True

    def _main_leaf(self, reference: int, levels: int) -> int:
        """Index of the main proposal at the deepest level (ROOT for an empty tree)."""
        if levels == 0:
            return ROOT
        main = self.oracle.proposals(reference, len(self.committed_ids) + levels - 1, 1)[0]
        deepest = (self.tree.depths == levels) & (self.tree.token_ids == main)
        return int(torch.nonzero(deepest).flatten()[0])

    def _follow_reference(self, old_len: int) -> None:
        ref = self.oracle.references[self.reference] if self.reference is not None else []
        if ref[old_len:len(self.committed_ids)] != self.committed_ids[old_len:]:
            self.reference = self.oracle.find(self.committed_ids)

    def _on_reroot(self, path: list[int], old_len: int, features: torch.Tensor | None) -> None:
        self._follow_reference(old_len)  # the kept subtree is exactly what fresh steps would build

    def _on_rollback(self, old_len: int, features: torch.Tensor | None) -> None:
        self._follow_reference(old_len)

    def _on_reset(self, features: torch.Tensor | None) -> None:
        self.reference = self.oracle.find(self.committed_ids)

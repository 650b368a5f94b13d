"""Per-request speculation statistics with the definitions of DESIGN.md §11."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SpecStats:
    """τ = committed tokens per verification (bonus included); acceptance per depth d = accepted nodes at
    depth d / verifications whose snapshot reached depth d."""

    num_verifications: int = 0
    num_committed: int = 0  # tokens committed by verifications (prefill's first token excluded)
    accepted_per_depth: list[int] = field(default_factory=list)
    reached_per_depth: list[int] = field(default_factory=list)
    num_reroot_hits: int = 0  # verifications that started from a tree re-rooted along the previous commit
    num_draft_tokens: int = 0  # draft nodes verified
    num_off_top: int = 0  # commits that took a target candidate other than the target's choice (lossy mode)
    elapsed_s: float = 0.0

    def record(self, num_accepted: int, tree_depth: int, num_committed: int, num_nodes: int = 0,
               is_reroot_hit: bool = False, is_off_top: bool = False) -> None:
        self.num_verifications += 1
        self.num_off_top += int(is_off_top)
        self.num_committed += num_committed
        self.num_draft_tokens += num_nodes
        self.num_reroot_hits += int(is_reroot_hit)
        _bump(self.accepted_per_depth, num_accepted)
        _bump(self.reached_per_depth, tree_depth)

    @property
    def tau(self) -> float:
        return self.num_committed / self.num_verifications if self.num_verifications else 0.0

    @property
    def accepted_padded(self) -> list[int]:
        """Accepted counts for every depth any verification reached (zeros where none was accepted)."""
        width = max(len(self.reached_per_depth), len(self.accepted_per_depth))
        return self.accepted_per_depth + [0] * (width - len(self.accepted_per_depth))

    @property
    def acceptance_per_depth(self) -> list[float]:
        return [a / r if r else 0.0 for a, r in zip(self.accepted_padded, self.reached_per_depth, strict=False)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "tau": self.tau,
            "num_verifications": self.num_verifications,
            "num_committed": self.num_committed,
            "accepted_per_depth": self.accepted_padded,
            "reached_per_depth": list(self.reached_per_depth),
            "acceptance_per_depth": self.acceptance_per_depth,
            "num_reroot_hits": self.num_reroot_hits,
            "reroot_hit_rate": self.num_reroot_hits / self.num_verifications if self.num_verifications else 0.0,
            "num_draft_tokens": self.num_draft_tokens,
            "num_off_top": self.num_off_top,
            "elapsed_s": self.elapsed_s,
        }


def _bump(counts: list[int], depth: int) -> None:
    """Count one at every depth 1..depth."""
    if len(counts) < depth:
        counts.extend([0] * (depth - len(counts)))
    for d in range(depth):  # at most the tree depth
        counts[d] += 1

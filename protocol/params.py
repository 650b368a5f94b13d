"""Wire-level settings that travel in messages and YAML: how the target samples, how big draft trees are.

Pure dataclasses (no torch), so the coordinator process can validate and forward them without
importing a model library. `workers.sampling` and `workers.tree_policy` re-export them.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

from protocol.errors import RequestError

MAX_SAMPLES = 64  # most samples (`n`) one request may ask for


@dataclass(frozen=True)
class SamplingParams:
    """How the target picks tokens. temperature 0 = greedy; top_k 0 and top_p 1 = no truncation."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature < 0:
            raise RequestError(f"temperature must be a finite number >= 0, got {self.temperature!r}",
                               "temperature")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p!r}", "top_p")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise RequestError(f"top_k must be an integer >= 0, got {self.top_k!r}", "top_k")
        if self.seed is not None and (not isinstance(self.seed, int) or not 0 <= self.seed < 2**63):
            raise RequestError(f"seed must be an integer in [0, 2**63), got {self.seed!r}", "seed")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    def with_seed(self) -> SamplingParams:
        """These parameters with a fresh random seed when none was given."""
        if self.seed is not None or self.is_greedy:
            return self
        return SamplingParams(self.temperature, self.top_p, self.top_k, secrets.randbits(63))

    def for_sample(self, index: int) -> SamplingParams:
        """The parameters of sample `index` of an n > 1 request: its own seed stream, sample 0 keeps the seed
        (so it equals the n = 1 answer). Call on seeded parameters (`with_seed`)."""
        if index == 0 or self.seed is None:
            return self
        return SamplingParams(self.temperature, self.top_p, self.top_k, sample_seed(self.seed, index))


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index`: a splitmix64 step away from `seed`, so streams never overlap by a shift."""
    z = (seed + index * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1  # in [0, 2**63)


@dataclass(frozen=True)
class TreeConfig:
    """Budgets of a draft tree; YAML `speculation.tree` keys equal these field names."""

    total_tokens: int = 32  # nodes per snapshot sent for verification
    depth: int = 6  # deepest node of a snapshot
    top_k: int = 8  # children per expanded node, and nodes expanded per drafter step
    static_paths: tuple[tuple[int, ...], ...] | None = None  # child-rank paths; None = dynamic tree
    max_living_nodes: int = 0  # cap of the living tree in async mode; 0 = 4 * total_tokens
    max_living_depth: int = 0  # the living tree grows this deep (0 = 2 * depth), so a re-rooted
    # subtree is still `depth` deep; snapshots never go below `depth`
    prune_living: bool = False  # async: at the cap, drop the least likely leaves to keep growing the likeliest
    # paths (while that is worth more than what it drops) instead of idling until the next commit; off by
    # default: on a 2-core CPU the idle drafter's core is where the coordinator and clients run (performance.md)
    spec_codes: frozenset[int] = field(init=False, repr=False, compare=False, default=frozenset())

    def __post_init__(self) -> None:
        for key in ("total_tokens", "depth", "top_k"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"tree.{key} must be a positive integer, got {value!r}")
        for key in ("max_living_nodes", "max_living_depth"):
            if getattr(self, key) < 0:
                raise ValueError(f"tree.{key} must be >= 0, got {getattr(self, key)!r}")
        if not isinstance(self.prune_living, bool):
            raise ValueError(f"tree.prune_living must be true or false, got {self.prune_living!r}")
        if self.static_paths is not None:
            paths = tuple(tuple(int(r) for r in p) for p in self.static_paths)
            _check_static_paths(paths)
            object.__setattr__(self, "static_paths", paths)
            object.__setattr__(self, "total_tokens", len(paths))
            object.__setattr__(self, "depth", max(len(p) for p in paths))
            object.__setattr__(self, "top_k", max(max(p) for p in paths) + 1)
            object.__setattr__(self, "spec_codes", frozenset(_path_code(p, self.top_k) for p in paths))

    @property
    def living_cap(self) -> int:
        return self.max_living_nodes or 4 * self.total_tokens

    @property
    def living_depth(self) -> int:
        return max(self.max_living_depth or 2 * self.depth, self.depth)

    @property
    def is_static(self) -> bool:
        return self.static_paths is not None


def _check_static_paths(paths: tuple[tuple[int, ...], ...]) -> None:
    if not paths:
        raise ValueError("tree.static_paths must list at least one path")
    known = set(paths)
    for path in paths:
        if not path or min(path) < 0:
            raise ValueError(f"tree.static_paths entry {list(path)} must be a non-empty list of ranks >= 0")
        if len(path) > 1 and path[:-1] not in known:
            raise ValueError(f"tree.static_paths entry {list(path)} has no parent path {list(path[:-1])}")


def _path_code(ranks: tuple[int, ...], top_k: int) -> int:
    code = 0
    for rank in ranks:
        code = code * (top_k + 1) + rank + 1
    return code

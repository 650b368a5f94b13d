"""Draft-tree checks the coordinator runs before forwarding a tree to a verifier."""

from __future__ import annotations

import struct

import pytest

from protocol.drafts import draft_problem
from protocol.messages import Blob, Draft


def ints(values: list[int]) -> Blob:
    return Blob("int64", (len(values),), struct.pack(f"<{len(values)}q", *values))


def floats(values: list[float]) -> Blob:
    return Blob("float32", (len(values),), struct.pack(f"<{len(values)}f", *values))


def draft(tokens: list[int], parents: list[int], probs: list[float] | None = None, root: int = 3) -> Draft:
    return Draft("r", 5, root, ints(tokens), ints(parents), floats(probs or [0.5] * len(tokens)))


def test_a_well_formed_tree_passes() -> None:
    assert draft_problem(draft([4, 5, 6], [-1, 0, 0]), max_nodes=8, vocab_size=10) is None
    assert draft_problem(draft([], []), max_nodes=0, vocab_size=10) is None


@pytest.mark.parametrize("bad,reason", [
    (draft([4, 5], [-1, 1]), "parent"),
    (draft([4, 5], [-1, -2]), "parent"),
    (draft([4, 50], [-1, 0]), "token ids"),
    (draft([4], [-1], root=99), "token ids"),
    (draft([4, 5], [-1]), "equal lengths"),
    (draft([1] * 9, [-1] * 9), "budget"),
    (Draft("r", 5, 3, floats([1.0]), ints([-1]), floats([0.5])), "int64"),
    (Draft("r", 5, 3, Blob("int64", (1, 1), b"\0" * 8), ints([-1]), floats([0.5])), "1-D"),
])
def test_malformed_trees_are_named(bad: Draft, reason: str) -> None:
    problem = draft_problem(bad, max_nodes=8, vocab_size=10)
    assert problem is not None and reason in problem

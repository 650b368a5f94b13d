"""Acceptance math on hand-built trees and distributions."""

from __future__ import annotations

import pytest
import torch

from tests.stats import chi_square_pvalue
from workers.acceptance import accept_path, accept_with_candidates, recursive_rejection
from workers.sampling import SamplingParams, choose_tokens
from workers.tree import ROOT, DraftTree

#   root -> a(1) -> c(3) -> e(5)
#        -> b(2) -> d(4)
TREE = DraftTree.from_lists([1, 2, 3, 4, 5], [ROOT, ROOT, 0, 1, 2], [0.5] * 5)


@pytest.mark.parametrize("choice,path,bonus", [
    ([9, 0, 0, 0, 0, 0], [], 9),  # nothing accepted: bonus after the root
    ([2, 0, 4, 0, 8, 0], [1, 3], 8),  # b then d, bonus after d
    ([1, 3, 0, 5, 0, 6], [0, 2, 4], 6),  # the whole deepest path and the bonus below it
    ([1, 7, 0, 5, 0, 6], [0], 7),  # a accepted, its child c rejected although c's own row agrees with e
])
def test_accept_path(choice: list[int], path: list[int], bonus: int) -> None:
    got_path, got_bonus = accept_path(TREE, torch.tensor(choice))
    assert got_path.tolist() == path and got_bonus == bonus


def test_accept_path_empty_tree() -> None:
    path, bonus = accept_path(DraftTree.empty(), torch.tensor([4]))
    assert path.numel() == 0 and bonus == 4


def _target() -> torch.Tensor:
    return torch.tensor([0.30, 0.25, 0.15, 0.10, 0.08, 0.07, 0.05, 0.0])


@pytest.mark.parametrize("q", [
    torch.tensor([0.30, 0.25, 0.15, 0.10, 0.08, 0.07, 0.05, 0.0]),  # right drafter
    torch.tensor([0.01, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.31]),  # deliberately wrong, even on p = 0
])
def test_recursive_rejection_with_sampled_candidates_keeps_p(q: torch.Tensor) -> None:
    p, gen, n = _target(), torch.Generator().manual_seed(0), 6000
    counts = torch.zeros(8)
    for _ in range(n):
        gumbel = -torch.log(-torch.log(torch.rand(8, generator=gen)))
        candidates = torch.topk(q.log() + gumbel, 3).indices  # 3 draws from q without replacement
        _, token = recursive_rejection(p, candidates, q, gen)
        counts[token] += 1
    assert chi_square_pvalue(counts, p) > 1e-3


@pytest.mark.parametrize("candidates", [[0, 1], [7, 6, 5], [3]])
def test_recursive_rejection_point_masses_keep_p(candidates: list[int]) -> None:
    p, gen, n = _target(), torch.Generator().manual_seed(1), 6000
    counts = torch.zeros(8)
    for _ in range(n):
        _, token = recursive_rejection(p, torch.tensor(candidates), None, gen)
        counts[token] += 1
    assert chi_square_pvalue(counts, p) > 1e-3


def test_vectorised_acceptance_matches_recursive_rule_in_law() -> None:
    """accept_path with one seeded draw per node gives the same law as the sibling loop."""
    tree = DraftTree.from_lists([0, 1, 6], [ROOT, ROOT, ROOT], [0.5, 0.3, 0.2])
    logits = _target().clamp(min=1e-12).log()[None].expand(4, -1)
    params = SamplingParams(temperature=1.0, seed=5)
    counts = torch.zeros(8)
    for position in range(6000):  # one position per trial: independent draws
        choice = choose_tokens(logits, params, torch.full((4,), position))
        path, bonus = accept_path(tree, choice)
        counts[int(tree.token_ids[path[0]]) if path.numel() else bonus] += 1
    assert chi_square_pvalue(counts, _target()) > 1e-3


def _candidates_tree() -> DraftTree:
    # root children: 10 (node 0), 11 (node 1); 11 -> 20 (2) -> 30 (3); 10 -> 21 (4)
    return DraftTree.from_lists([10, 11, 20, 30, 21], [ROOT, ROOT, 1, 2, 0], [0.5] * 5)


def test_target_candidate_with_the_longest_accepted_branch_is_committed() -> None:
    tree = _candidates_tree()
    target = torch.tensor([12, 99, 20, 30, 40, 7])  # the target's choice at the root (12) is no child
    top3 = torch.tensor([[12, 11, 10]] + [[t, 1, 2] for t in target[1:].tolist()])
    exact_path, exact_bonus = accept_path(tree, target)
    assert exact_path.tolist() == [] and exact_bonus == 12
    path, bonus, off_top = accept_with_candidates(tree, target, top3)
    assert (path.tolist(), bonus, off_top) == ([1, 2, 3], 40, True)  # 11, then 20 and 30 accepted, bonus 40
    # 11 outside the top 2: only 10 is a candidate, and nothing below it is accepted -> the exact result
    top2 = torch.tensor([[12, 10]] + [[t, 1] for t in target[1:].tolist()])
    path, bonus, off_top = accept_with_candidates(tree, target, top2)
    assert (path.tolist(), bonus, off_top) == ([], 12, False)


def test_target_candidates_of_width_one_are_the_exact_rule() -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(30):
        n = int(torch.randint(1, 20, (1,), generator=generator))
        parents = [ROOT] + [int(torch.randint(-1, i, (1,), generator=generator)) for i in range(1, n)]
        tree = DraftTree.from_lists(torch.randint(0, 4, (n,), generator=generator).tolist(), parents, [0.5] * n)
        target = torch.randint(0, 4, (n + 1,), generator=generator)
        exact = accept_path(tree, target)
        path, bonus, off_top = accept_with_candidates(tree, target, target[:, None])
        assert (path.tolist(), bonus, off_top) == (exact[0].tolist(), exact[1], False)
        wide = accept_with_candidates(tree, target, torch.stack([target, (target + 1) % 4, (target + 2) % 4], 1))
        assert wide[0].numel() >= exact[0].numel()  # never commits less
        assert wide[2] == (wide[0].numel() > exact[0].numel())
        if wide[0].numel():  # a root-to-node path in depth order
            assert tree.depths[wide[0]].tolist() == list(range(1, wide[0].numel() + 1))
            assert bool(tree.ancestors()[wide[0][-1]][wide[0]].all())

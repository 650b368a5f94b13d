"""Derived tree data is sliced, not rebuilt: masks of prefixes and re-rooted subtrees equal fresh ones."""

from __future__ import annotations

import pytest
import torch

from workers.cost_model import best_first_order
from workers.tree import ROOT, DraftTree
from workers.tree_mask import tree_mask


def random_tree(seed: int, n: int = 20) -> DraftTree:
    generator = torch.Generator().manual_seed(seed)
    parents = [ROOT] + [int(torch.randint(-1, i, (1,), generator=generator)) for i in range(1, n)]
    tokens = torch.randint(0, 50, (n,), generator=generator).tolist()
    return DraftTree.from_lists(tokens, parents, torch.rand(n, generator=generator).tolist())


def fresh(tree: DraftTree) -> DraftTree:
    """The same nodes with nothing cached."""
    return DraftTree.from_lists(tree.token_ids.tolist(), tree.parents.tolist(), tree.probs.tolist())


def test_sliced_masks_equal_fresh_ones() -> None:
    for seed in range(10):
        tree = random_tree(seed)
        tree.ancestors()  # cache, then every operation below slices it
        ordered = tree.reorder(best_first_order(tree.path_probs()))
        for size in (0, 1, 5, 13, 20):
            sliced = ordered.prefix(size)
            for past in (0, 7):
                mask, positions = tree_mask(sliced, past, torch.float32)
                want_mask, want_positions = tree_mask(fresh(sliced), past, torch.float32)
                assert torch.equal(mask, want_mask) and torch.equal(positions, want_positions)
            assert torch.allclose(sliced.path_probs(), fresh(sliced).path_probs())


def test_reordering_a_first_part_of_the_order_gives_that_prefix() -> None:
    for seed in range(6):
        tree = random_tree(seed)
        tree.ancestors()
        order = best_first_order(tree.path_probs())
        for size in (0, 1, 5, 13):
            part = tree.reorder(order[:size])
            whole = tree.reorder(order).prefix(size)
            assert torch.equal(part.token_ids, whole.token_ids) and torch.equal(part.parents, whole.parents)
            assert torch.equal(part.ancestors(), whole.ancestors())
    tree = random_tree(0)
    child = int(torch.nonzero(tree.parents >= 0).flatten()[0])
    with pytest.raises(ValueError):  # a node whose parent is left out is no tree
        tree.reorder(torch.tensor([child]))


def test_subtree_keeps_exact_derived_data() -> None:
    tree = random_tree(3, 30)
    tree.path_probs()
    for node in range(tree.num_nodes):
        sub = tree.subtree(node)
        again = fresh(sub)
        assert torch.equal(sub.ancestors(), again.ancestors())
        assert torch.allclose(sub.path_probs(), again.path_probs(), rtol=1e-5)


def test_reroot_follows_tokens_committed_since_a_stale_tree_was_built() -> None:
    #        root
    #       /    \
    #     0(a)   1(b)
    #    /   \     \
    #  2(c)  3(d)  4(e)
    #   |
    #  5(f)
    tree = DraftTree.from_lists([10, 11, 12, 13, 14, 15], [ROOT, ROOT, 0, 0, 1, 2], [0.6, 0.3, 0.5, 0.4, 0.9, 0.8])
    assert tree.reroot([]) is tree
    below_a = tree.reroot([10])
    assert below_a is not None and below_a.token_ids.tolist() == [12, 13, 15] and below_a.depths.tolist() == [1, 1, 2]
    below_ac = tree.reroot([10, 12])
    assert below_ac is not None and below_ac.token_ids.tolist() == [15] and below_ac.parents.tolist() == [ROOT]
    leaf = tree.reroot([10, 12, 15])
    assert leaf is not None and leaf.num_nodes == 0  # followed to a leaf: nothing left, but it fitted
    assert tree.reroot([10, 14]) is None  # 14 hangs under b, not a: the tree no longer fits
    assert tree.reroot([99]) is None

"""DraftTree structure: depths, ancestors, snapshots, re-rooting and path following."""

from __future__ import annotations

import torch

from workers.tree import ROOT, DraftTree

#        root
#       /    \
#     0(a)   1(b)
#    /   \     \
#  2(c)  3(d)  4(e)
#   |
#  5(f)
TOKENS = [10, 11, 12, 13, 14, 15]
PARENTS = [ROOT, ROOT, 0, 0, 1, 2]
PROBS = [0.6, 0.3, 0.5, 0.4, 0.9, 0.8]


def make() -> DraftTree:
    return DraftTree.from_lists(TOKENS, PARENTS, PROBS)


def test_depths_and_ancestors() -> None:
    tree = make()
    assert tree.depths.tolist() == [1, 1, 2, 2, 2, 3]
    anc = tree.ancestors()
    assert torch.nonzero(anc[5]).flatten().tolist() == [0, 2, 5]
    assert torch.nonzero(anc[4]).flatten().tolist() == [1, 4]
    expected = torch.tensor([0.6, 0.3, 0.3, 0.24, 0.27, 0.24])
    assert torch.allclose(tree.path_probs(), expected)


def test_add_rejects_forward_parent() -> None:
    tree = make()
    try:
        tree.add(torch.tensor([7]), torch.tensor([1]), torch.tensor([0.5]))
    except ValueError as err:
        assert "parent" in str(err)
    else:
        raise AssertionError("a parent beyond the tree must be refused")


def test_snapshot_is_ancestor_closed_and_best() -> None:
    tree = make()
    snap = tree.snapshot(4)
    # best four by path prob: a .6, b .3, c .3, e .27
    assert sorted(snap.token_ids.tolist()) == [10, 11, 12, 14]
    kept = set(snap.token_ids.tolist())
    for i in range(snap.num_nodes):
        parent = int(snap.parents[i])
        assert parent == ROOT or int(snap.token_ids[parent]) in kept
    assert snap.snapshot(2, max_depth=1).depths.max() == 1


def test_snapshot_keeps_parent_on_probability_one_ties() -> None:
    tree = DraftTree.from_lists([1, 2, 3], [ROOT, 0, 1], [1.0, 1.0, 1.0])
    snap = tree.snapshot(2)
    assert snap.token_ids.tolist() == [1, 2] and snap.parents.tolist() == [ROOT, 0]


def test_subtree_reroots() -> None:
    sub = make().subtree(0)
    assert sub.token_ids.tolist() == [12, 13, 15]
    assert sub.parents.tolist() == [ROOT, ROOT, 0]
    assert sub.depths.tolist() == [1, 1, 2]
    assert make().subtree(5).num_nodes == 0


def test_follow() -> None:
    tree = make()
    assert tree.follow([10, 12, 15]) == [0, 2, 5]
    assert tree.follow([10, 14]) == [0]
    assert tree.follow([99]) == []


def test_batch_internal_parents() -> None:
    tree = DraftTree.empty().add(torch.tensor([ROOT, 0, 1]), torch.tensor([5, 6, 7]), torch.ones(3))
    assert tree.depths.tolist() == [1, 2, 3]


def test_subtree_without_the_ancestor_matrix_equals_the_sliced_one() -> None:
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        n = int(torch.randint(2, 60, (1,), generator=generator))
        parents = [ROOT] + [int(torch.randint(-1, i, (1,), generator=generator)) for i in range(1, n)]
        tree = DraftTree.from_lists(torch.randint(0, 50, (n,), generator=generator).tolist(), parents,
                                    torch.rand(n, generator=generator).tolist())
        node = int(torch.randint(0, n, (1,), generator=generator))
        fresh = tree.subtree(node)  # no matrix built: one pass over the parents
        assert tree._ancestors is None
        tree.ancestors()
        sliced = tree.subtree(node)  # the cached matrix, sliced
        for name in ("token_ids", "parents", "probs", "depths"):
            assert torch.equal(getattr(fresh, name), getattr(sliced, name))
        assert torch.equal(fresh.ancestors(), sliced.ancestors())
        assert fresh.num_nodes == int(tree.ancestors()[:, node].sum()) - 1


def test_a_grown_tree_extends_its_cached_ancestor_matrix_exactly() -> None:
    generator = torch.Generator().manual_seed(5)
    for _ in range(30):
        n = int(torch.randint(0, 40, (1,), generator=generator))
        parents = [int(torch.randint(-1, i, (1,), generator=generator)) if i else ROOT for i in range(n)]
        tree = DraftTree.from_lists(torch.randint(0, 50, (n,), generator=generator).tolist(), parents,
                                    torch.rand(n, generator=generator).tolist())
        tree.ancestors()  # cached: `add` extends it instead of dropping it
        m = int(torch.randint(1, 12, (1,), generator=generator))
        new_parents = torch.tensor([int(torch.randint(-1, n + i, (1,), generator=generator)) for i in range(m)])
        new_tokens, new_probs = torch.randint(0, 50, (m,), generator=generator), torch.rand(m, generator=generator)
        grown = tree.add(new_parents, new_tokens, new_probs)
        assert grown._ancestors is not None
        fresh = DraftTree.from_tensors(grown.token_ids, grown.parents, grown.probs)
        assert torch.equal(grown.ancestors(), fresh.ancestors())
        assert torch.equal(grown.path_probs(), fresh.path_probs())
        uncached = DraftTree.empty().add(torch.tensor([ROOT]), torch.tensor([1]), torch.ones(1))
        assert uncached._ancestors is None  # nothing cached: nothing to extend

"""The tree shapes the cost picture verifies."""

from __future__ import annotations

from runtime.bench.costs import bushy, chain


def test_chain_is_one_node_per_level() -> None:
    tree = chain(8)
    assert (tree.num_nodes, tree.max_depth) == (8, 8)
    assert chain(0).num_nodes == 0


def test_bushy_tree_has_four_children_per_node_breadth_first() -> None:
    tree = bushy(20)  # 4 at depth 1, 16 at depth 2
    assert tree.num_nodes == 20 and tree.max_depth == 2
    assert tree.parents[:4].tolist() == [-1] * 4
    assert tree.parents[4:8].tolist() == [0] * 4 and tree.parents[16:20].tolist() == [3] * 4
    assert bushy(21).max_depth == 3

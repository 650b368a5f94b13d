"""Tree policies: static shapes, dynamic budgets and config validation."""

from __future__ import annotations

import pytest
import torch

from workers.tree import ROOT, DraftTree
from workers.tree_policy import TreeConfig, children_to_add, leaves_to_prune, pick_expansions, rank_path_codes


def test_config_validation_names_key() -> None:
    with pytest.raises(ValueError, match="top_k"):
        TreeConfig(top_k=0)
    with pytest.raises(ValueError, match="static_paths"):
        TreeConfig(static_paths=((0, 1),))  # parent path (0,) missing


def test_static_config_derives_budgets() -> None:
    config = TreeConfig(static_paths=((0,), (1,), (0, 0), (0, 0, 2)))
    assert (config.total_tokens, config.depth, config.top_k) == (4, 3, 3)


def _grow_static(config: TreeConfig) -> DraftTree:
    tree = DraftTree.empty()
    while True:
        nodes = pick_expansions(tree, config)
        if nodes.numel() == 0:
            return tree
        # fake drafter: candidates 100.., probabilities decreasing with rank
        k = config.top_k
        tokens = 100 + torch.arange(k)[None].expand(nodes.numel(), -1) + 10 * (nodes[:, None] + 1)
        probs = torch.linspace(0.5, 0.1, k)[None].expand(nodes.numel(), -1)
        tree = tree.add(*children_to_add(tree, nodes, tokens, probs, config))


def test_static_tree_has_exactly_the_spec_shape() -> None:
    paths = ((0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0))
    config = TreeConfig(static_paths=paths)
    tree = _grow_static(config)
    assert tree.num_nodes == len(paths)
    expected = sorted(_code(p, config.top_k) for p in paths)
    assert sorted(rank_path_codes(tree, config.top_k).tolist()) == expected


def _code(path: tuple[int, ...], k: int) -> int:
    code = 0
    for r in path:
        code = code * (k + 1) + r + 1
    return code


def test_dynamic_expansion_respects_depth_and_cap() -> None:
    config = TreeConfig(total_tokens=4, depth=2, top_k=2, max_living_nodes=6)
    tree = DraftTree.empty()
    assert pick_expansions(tree, config).tolist() == [ROOT]
    for _ in range(10):
        nodes = pick_expansions(tree, config)
        if nodes.numel() == 0:
            break
        tokens = torch.arange(2)[None].expand(nodes.numel(), -1) + 10 * (nodes[:, None] + 2)
        tree = tree.add(*children_to_add(tree, nodes, tokens, torch.tensor([[0.7, 0.2]]).expand(nodes.numel(), -1),
                                         config))
    assert tree.max_depth <= 2
    assert tree.num_nodes <= 6 + 2 * config.top_k
    assert pick_expansions(tree, config).numel() == 0


def _pruning_tree() -> DraftTree:
    """ROOT: A .9, B .1; A: C .8, D .2; B: E .6, F .4; C: G .9, H .1 (path probabilities A .9, B .1, C .72,
    D .18, E .06, F .04, G .648, H .072)."""
    return DraftTree.from_lists([1, 2, 3, 4, 5, 6, 7, 8], [ROOT, ROOT, 0, 0, 1, 1, 2, 2],
                                [0.9, 0.1, 0.8, 0.2, 0.6, 0.4, 0.9, 0.1])


def test_leaves_to_prune_drops_the_least_likely_leaves_for_the_likeliest_expansion() -> None:
    tree = _pruning_tree()
    at_cap = TreeConfig(total_tokens=2, depth=4, top_k=2, max_living_nodes=8, prune_living=True)
    # leaves D E F G H; each parent's best child (A C E G) stays; G and D would be expanded next, so they
    # stay; G (.648) is worth more than the two least likely others, F and H (.04 + .072): they go
    assert leaves_to_prune(tree, at_cap, 2).tolist() == [5, 7]
    # D (.18) would displace two more, but no prunable leaf is left; one each: G displaces F, D displaces H
    assert leaves_to_prune(tree, at_cap, 1).tolist() == [5, 7]
    over = TreeConfig(total_tokens=2, depth=4, top_k=2, max_living_nodes=7, prune_living=True)
    # one node over the cap: the least likely prunable leaf (F) goes first, then H for G
    assert leaves_to_prune(tree, over, 1).tolist() == [5, 7]
    # with F gone, H alone is too few for G's two children: no expansion is worth it, nothing is dropped
    assert leaves_to_prune(tree, over, 2).numel() == 0
    kept = torch.ones(tree.num_nodes, dtype=torch.bool)
    kept[leaves_to_prune(tree, at_cap, 2)] = False
    pruned = tree.select(torch.nonzero(kept).flatten())  # ancestor-closed: select would raise otherwise
    assert pruned.num_nodes == 6 and pick_expansions(pruned, at_cap).numel() > 0


def test_leaves_to_prune_keeps_what_is_worth_as_much_as_an_expansion() -> None:
    even = DraftTree.from_lists([1, 2, 3, 4, 5, 6], [ROOT, ROOT, 0, 0, 1, 1], [0.5] * 6)  # leaves all .25
    config = TreeConfig(total_tokens=2, depth=4, top_k=2, max_living_nodes=6, prune_living=True)
    assert leaves_to_prune(even, config, 1).numel() == 0  # .25 is not worth more than .25
    tree = _pruning_tree()
    below = TreeConfig(total_tokens=2, depth=4, top_k=2, max_living_nodes=9, prune_living=True)
    static = TreeConfig(static_paths=((0,), (1,), (0, 0)), max_living_nodes=2, prune_living=True)
    off = TreeConfig(total_tokens=2, depth=4, top_k=2, max_living_nodes=8)  # the default
    for config in (below, static, off):
        assert leaves_to_prune(tree, config, 2).numel() == 0

"""Tree policies: static shapes, dynamic budgets and config validation."""

from __future__ import annotations

import pytest
import torch

from workers.tree import ROOT, DraftTree
from workers.tree_policy import TreeConfig, children_to_add, pick_expansions, rank_path_codes


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

"""The batch's node choice as one tensor program equals the per-offer functions it replaces."""

from __future__ import annotations

import random

import torch

from workers.batch_choice import Forest, Offer, best_by_row, merge_offers, merge_trees, pick_offers, rank_offers
from workers.cost_model import (
    CalibratedAcceptance,
    LearnedAcceptance,
    best_first_order,
    expected_by_width,
    monotone_estimates,
)
from workers.tree import DraftTree


def random_tree(rng: random.Random, num_nodes: int) -> DraftTree:
    parents = [-1 if i == 0 or rng.random() < 0.3 else rng.randrange(i) for i in range(num_nodes)]
    probs = [rng.choice([0.5, 0.25, rng.random()]) for _ in range(num_nodes)]  # ties on purpose
    return DraftTree.from_lists([rng.randrange(100) for _ in range(num_nodes)], parents, probs)


def random_forest(seed: int) -> list[DraftTree]:
    rng = random.Random(seed)
    return [random_tree(rng, rng.choice([1, 2, 5, 17, 40])) for _ in range(rng.randrange(1, 9))]


def trained_estimator(seed: int) -> CalibratedAcceptance:
    """Counts that are not the prior, so estimates are not monotone before capping."""
    estimator = CalibratedAcceptance()
    generator = torch.Generator().manual_seed(seed)
    estimator.seen += torch.rand(estimator.seen.shape, generator=generator, dtype=torch.float64) * 20
    estimator.accepted += estimator.seen * torch.rand(estimator.seen.shape, generator=generator, dtype=torch.float64)
    return estimator


def test_path_probs_and_caps_equal_each_trees() -> None:
    for seed in range(20):
        trees = random_forest(seed)
        forest = Forest(trees)
        for tree, probs in zip(trees, forest.split(forest.path_probs()), strict=True):
            assert torch.equal(probs, tree.path_probs())
        values = torch.rand(forest.num_nodes, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        capped = forest.split(forest.cap_by_ancestors(values))
        for tree, own, mine in zip(trees, forest.split(values), capped, strict=True):
            assert torch.equal(mine, monotone_estimates(tree, own))


def test_ranking_equals_per_offer_order_and_expected() -> None:
    for seed in range(30):
        trees = random_forest(seed)
        rng = random.Random(seed)
        limits = [min(rng.choice([1, 3, 8, 64]), t.num_nodes) for t in trees]
        estimator = trained_estimator(seed)
        forest = Forest(trees)
        raw = estimator.raw_estimates(trees, forest.depths, forest.path_probs())
        estimates = forest.cap_by_ancestors(raw)
        max_width = 33
        ranking = rank_offers(forest, estimates, limits, max_width)
        for index, (tree, limit) in enumerate(zip(trees, limits, strict=True)):
            own = estimator.estimate(tree)
            assert torch.allclose(forest.split(estimates)[index], own, rtol=0, atol=1e-15)
            order = best_first_order(own)[:limit]
            assert torch.equal(ranking.best(index), order)
            assert torch.allclose(ranking.expected[index], expected_by_width(own[order], max_width), atol=1e-12)
            tree.reorder(ranking.best(index))  # parents before children: a valid tree to verify


def test_pick_and_best_by_row() -> None:
    expected = torch.tensor([[1.0, 1.5, 1.6], [1.0, 1.7, 1.7], [1.0, 1.2, 2.0], [1.0, 1.5, 1.6]],
                            dtype=torch.float64)
    rows = [0, 0, 1, 2]  # row 3 offers nothing
    assert pick_offers(rows, expected, 2, 4) == [1, 2, 3, None]
    assert pick_offers(rows, expected, 3, 4) == [1, 2, 3, None]
    assert pick_offers([0, 0], expected[[0, 3]], 2, 1) == [0]  # a tie goes to the first offered
    by_row = best_by_row(rows, expected, 4)
    assert torch.equal(by_row[0], torch.tensor([1.0, 1.7, 1.7], dtype=torch.float64))
    assert torch.equal(by_row[3], torch.ones(3, dtype=torch.float64))


def random_verdicts(seed: int) -> tuple[list[DraftTree], list[tuple[DraftTree, torch.Tensor, torch.Tensor]]]:
    """A random forest and, per tree, the nodes down to a random depth with random verdicts."""
    trees = random_forest(seed)
    rng = random.Random(seed)
    verdicts = []
    for tree in trees:
        index = torch.nonzero(tree.depths <= rng.randrange(1, 4)).flatten()
        accepted = torch.rand(index.numel(), generator=torch.Generator().manual_seed(seed)) < 0.5
        verdicts.append((tree, index, accepted))
    return trees, verdicts


def test_update_many_equals_updates_in_turn() -> None:
    for seed in range(10):
        trees, verdicts = random_verdicts(seed)
        one_by_one, at_once = trained_estimator(seed), trained_estimator(seed)
        for tree, index, accepted in verdicts:
            if index.numel():
                one_by_one.update(tree.select(index), accepted)
        at_once.update_many(verdicts)
        assert torch.allclose(one_by_one.seen, at_once.seen, rtol=1e-12, atol=1e-12)
        assert torch.allclose(one_by_one.accepted, at_once.accepted, rtol=1e-12, atol=1e-12)
        learned_a, learned_b = LearnedAcceptance(), LearnedAcceptance()
        for tree, index, accepted in verdicts:
            if index.numel():
                learned_a.update(tree.select(index), accepted)
        learned_b.update_many(verdicts)
        assert torch.equal(learned_a.weights, learned_b.weights)
        forest = Forest(trees)
        raw = learned_b.raw_estimates(trees, forest.depths, forest.path_probs())
        assert torch.equal(raw, torch.cat([learned_b.estimate(t) for t in trees]))


def paths(tree: DraftTree) -> list[tuple[int, ...]]:
    """Each node's token path from the root."""
    out: list[tuple[int, ...]] = []
    for parent, token in zip(tree.parents.tolist(), tree.token_ids.tolist(), strict=True):
        out.append((*(out[parent] if parent >= 0 else ()), token))
    return out


def trie(rng: random.Random, num_nodes: int, vocab: int) -> DraftTree:
    """A random tree with distinct tokens under each parent (as every draft source makes them)."""
    parents: list[int] = []
    tokens: list[int] = []
    used: set[tuple[int, int]] = set()
    while len(tokens) < num_nodes:
        parent = -1 if not tokens or rng.random() < 0.3 else rng.randrange(len(tokens))
        token = rng.randrange(vocab)
        if (parent, token) not in used:
            used.add((parent, token))
            parents.append(parent)
            tokens.append(token)
    order = sorted(range(num_nodes), key=lambda i: len(paths_of(parents, i)))  # parents first
    where = {old: new for new, old in enumerate(order)}
    return DraftTree.from_lists([tokens[i] for i in order], [where[parents[i]] if parents[i] >= 0 else -1
                                                            for i in order], [rng.random() for _ in order])


def paths_of(parents: list[int], node: int) -> list[int]:
    chain = []
    while node >= 0:
        chain.append(node)
        node = parents[node]
    return chain


def test_merged_tree_is_the_union_of_the_token_paths() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        trees = [trie(rng, rng.choice([1, 4, 12, 30]), 4) for _ in range(rng.randrange(1, 4))]  # small vocab: overlaps
        merged, maps = merge_trees(trees)
        merged_paths = paths(merged)
        assert len(set(merged_paths)) == merged.num_nodes  # a trie: one node per token path
        assert set(merged_paths) == {p for t in trees for p in paths(t)}
        assert bool((merged.parents < torch.arange(merged.num_nodes)).all())  # parents come first
        for tree, where in zip(trees, maps, strict=True):
            assert [merged_paths[i] for i in where] == paths(tree)


def test_merged_offer_commits_at_least_the_best_source_at_every_width() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        trees = [trie(rng, rng.choice([3, 12, 30]), 5) for _ in range(3)]
        estimator = trained_estimator(seed)
        offers = [Offer(0, t, s, min(16, t.num_nodes)) for t, s in zip(trees, ("drafter", "lookup", "hidden"),
                                                                        strict=True)]
        forest = Forest(trees)
        estimates = forest.cap_by_ancestors(estimator.raw_estimates(trees, forest.depths, forest.path_probs()))
        alone = rank_offers(forest, estimates, [o.limit for o in offers], 17).expected
        [merged], [merged_est] = merge_offers([offers], forest.split(estimates), [16])
        assert merged.source == "drafter+lookup+hidden" and len(merged.sources()) == 3
        assert torch.equal(merged_est, forest_caps(merged.tree, merged_est))  # still monotone along paths
        union = rank_offers(Forest([merged.tree]), merged_est, [merged.limit], 17)
        assert bool((union.expected[0] >= alone.max(dim=0).values - 1e-12).all())
        merged.tree.reorder(union.best(0))  # the best-first order puts parents first


def forest_caps(tree: DraftTree, values: torch.Tensor) -> torch.Tensor:
    return Forest([tree]).cap_by_ancestors(values)


def test_on_paths_equals_follow_for_every_tree() -> None:
    """Every tree's nodes on the path its own committed tokens spell, as `DraftTree.follow` finds them,
    including trees with equal siblings (follow takes the lowest index) and rows of tokens that miss."""
    for seed in range(20):
        rng = random.Random(seed)
        trees = [random_tree(rng, rng.choice([1, 3, 8, 30])) for _ in range(rng.randrange(1, 7))]
        trees += trees[:2]  # the same tree twice: equal tokens under different trees' roots are no siblings
        token_rows = []
        for tree in trees:
            node = rng.randrange(tree.num_nodes)  # a path that exists, then maybe tokens beyond it
            chain = []
            while node >= 0:
                chain.append(int(tree.token_ids[node]))
                node = int(tree.parents[node])
            row = chain[::-1] + [rng.randrange(100) for _ in range(rng.randrange(3))]
            token_rows.append(row if rng.random() < 0.8 else [rng.randrange(100) for _ in range(rng.randrange(5))])
        token_rows[len(trees) - 2:] = token_rows[:2]
        on_path = Forest(trees).on_paths(token_rows)
        expected = []
        for tree, row in zip(trees, token_rows, strict=True):
            mask = [False] * tree.num_nodes
            for node in tree.follow(row):
                mask[node] = True
            expected += mask
        assert on_path.tolist() == expected


def test_update_nodes_equals_update_many() -> None:
    for seed in range(5):
        _, verdicts = random_verdicts(seed)
        many, nodes = trained_estimator(seed), trained_estimator(seed)
        many.update_many(verdicts)
        kept = [v for v in verdicts if v[1].numel()]
        nodes.update_nodes(torch.cat([t.depths[i] for t, i, _ in kept]),
                           torch.cat([t.path_probs()[i] for t, i, _ in kept]),
                           torch.cat([a for _, _, a in kept]), [i.numel() for _, i, _ in kept])
        assert torch.equal(many.seen, nodes.seen) and torch.equal(many.accepted, nodes.accepted)

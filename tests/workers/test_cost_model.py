"""The cost model: t(n) interpolation, calibrated acceptance, and the node count it picks."""

from __future__ import annotations

import itertools

import torch

from workers.cost_model import (
    CalibratedAcceptance,
    LearnedAcceptance,
    VerifyCost,
    best_first_order,
    choose_num_nodes,
    interpolate,
    monotone_estimates,
)
from workers.tree import ROOT, DraftTree


def brute_force_best(estimates: list[float], costs: list[float]) -> int:
    """Every ancestor-closed choice here is a prefix of the sorted estimates: try each length."""
    rates = [(1 + sum(estimates[:n])) / costs[n] for n in range(len(costs))]
    return max(range(len(costs)), key=lambda n: (rates[n], -n))


def test_choice_is_the_known_optimum_for_the_cpu_cost_table() -> None:
    # this machine's measured shape: t(0)=14.6 ms, +5 ms for the first node, then ~+1 ms per node
    costs = [14.6, 19.8, 21.0, 22.3, 23.6, 24.2, 24.8, 25.4, 26.0]
    high = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4]
    assert choose_num_nodes(high, costs) == brute_force_best(high, costs) == 8
    low = [0.2, 0.1, 0.05, 0.01, 0.0, 0.0, 0.0, 0.0]
    assert choose_num_nodes(low, costs) == brute_force_best(low, costs) == 0  # speculation would not pay
    middle = [0.6, 0.5, 0.1, 0.05, 0.0, 0.0, 0.0, 0.0]
    best = choose_num_nodes(middle, costs)
    assert best == brute_force_best(middle, costs) == 2


def test_choice_matches_brute_force_on_random_tables() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 12, (1,), generator=generator))
        estimates = sorted(torch.rand(n, generator=generator).tolist(), reverse=True)
        increments = torch.rand(n, generator=generator) * 5
        costs = (10 + torch.cat([torch.zeros(1), increments.cumsum(0)])).tolist()
        assert choose_num_nodes(estimates, costs) == brute_force_best(estimates, costs)


def test_flat_gpu_like_costs_take_every_useful_node() -> None:
    costs = [10.0] * 33  # verifying up to 32 nodes costs one step
    estimates = [0.9 ** (i + 1) for i in range(32)]
    assert choose_num_nodes(estimates, costs) == 32


def test_interpolation_between_and_beyond_measured_points() -> None:
    table = interpolate({0: 10.0, 4: 14.0, 8: 16.0}, 10)
    assert table[:9] == [10.0, 11.0, 12.0, 13.0, 14.0, 14.5, 15.0, 15.5, 16.0]
    assert table[10] == 17.0  # the last slope carries on


def test_verify_cost_averages_online_and_borrows_the_nearest_context_band() -> None:
    cost = VerifyCost(max_nodes=4, smoothing=0.5)
    assert not cost.is_known
    cost.observe(0, 200, 0.010)
    cost.observe(4, 200, 0.020)
    cost.observe(4, 200, 0.030)  # EMA: 0.02 + 0.5 * (0.03 - 0.02)
    assert cost.table(200) == [0.010, 0.01375, 0.0175, 0.02125, 0.025]
    assert cost.table(1000) == cost.table(200)  # no data in that band yet


def chain_and_branch() -> DraftTree:
    # root -> 0 -> 1 -> 2, and root -> 3 (a low-probability sibling)
    return DraftTree.from_lists([5, 6, 7, 8], [ROOT, 0, 1, ROOT], [0.9, 0.8, 0.7, 0.05])


def test_estimates_are_monotone_along_paths_and_order_is_topological() -> None:
    tree = chain_and_branch()
    raw = torch.tensor([0.5, 0.9, 0.2, 0.6], dtype=torch.float64)  # node 1 claims more than its parent
    capped = monotone_estimates(tree, raw)
    assert capped.tolist() == [0.5, 0.5, 0.2, 0.6]
    order = best_first_order(capped)
    assert order.tolist() == [3, 0, 1, 2]
    reordered = tree.reorder(order)  # raises if a child came before its parent
    assert reordered.token_ids.tolist() == [8, 5, 6, 7]


def test_calibration_learns_that_a_confident_drafter_is_wrong() -> None:
    model = CalibratedAcceptance(prior_weight=4.0)
    tree = chain_and_branch()
    before = model.estimate(tree)
    assert torch.allclose(before, tree.path_probs().double())  # no verdicts yet: the drafter's word
    for _ in range(100):
        model.update(tree, torch.zeros(4, dtype=torch.bool))  # never accepted
    after = model.estimate(tree)
    assert float(after.max()) < 0.05
    for _ in range(300):
        model.update(tree, torch.tensor([True, True, True, False]))
    assert float(model.estimate(tree)[2]) > 0.85  # the chain is right after all: old verdicts decayed


def test_learned_decision_model_separates_good_and_bad_children() -> None:
    model = LearnedAcceptance(learning_rate=0.5)
    tree = DraftTree.from_lists([5, 6, 7, 8], [ROOT, ROOT, 0, 0], [0.5, 0.5, 0.6, 0.4])
    verdict = torch.tensor([True, False, True, False])  # first-ranked siblings are right
    for _ in range(400):
        model.update(tree, verdict)
    estimates = model.estimate(tree)
    assert float(estimates[0]) > 0.8 > 0.2 > float(estimates[1])
    assert float(estimates[2]) > float(estimates[3])


def test_every_prefix_of_a_best_first_order_is_ancestor_closed() -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        n = 12
        parents = [ROOT] + [int(torch.randint(-1, i, (1,), generator=generator)) for i in range(1, n)]
        tree = DraftTree.from_lists(list(range(n)), parents, torch.rand(n, generator=generator).tolist())
        ordered = tree.reorder(best_first_order(tree.path_probs()))
        for size, node in itertools.product(range(n + 1), range(n)):
            if node < size and ordered.parents[node] >= 0:
                assert int(ordered.parents[node]) < size


def test_drafter_step_size_trades_value_for_measured_cost() -> None:
    from workers.cost_model import choose_num_expansions

    values = [1.0, 0.5, 0.2, 0.05]
    assert choose_num_expansions(values, [10.0, 10.0, 10.0, 10.0]) == 4  # flat cost (overhead-bound): all
    assert choose_num_expansions(values, [10.0, 20.0, 30.0, 40.0]) == 1  # cost grows as fast as the value falls
    assert choose_num_expansions(values, [10.0, 12.0, 20.0, 30.0]) == 2
    brute = max(range(1, 5), key=lambda e: (sum(values[:e]) / [10.0, 12.0, 20.0, 30.0][e - 1], -e))
    assert brute == 2

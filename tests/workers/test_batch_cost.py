"""The batch-aware cost model: one common width for a padded batch, chosen for the whole batch's tokens per
second, on a cost table that keeps its calibrated shape when forwards are measured online."""

from __future__ import annotations

import itertools

import pytest
import torch

from workers.batch_cost import BatchCost
from workers.cost_model import choose_num_nodes, choose_width, expected_by_width


def brute_force_width(estimates: list[list[float]], costs_s: list[float]) -> int:
    """Every width W, every row taking its W - 1 best nodes: the best total committed per second."""
    best, best_rate = 0, -1.0
    for width in range(1, len(costs_s) + 1):
        total = sum(1 + sum(sorted(row, reverse=True)[: width - 1]) for row in estimates)
        rate = total / costs_s[width - 1]
        if rate > best_rate * (1 + 1e-12):
            best, best_rate = width, rate
    return best


@pytest.mark.parametrize("seed", range(6))
def test_choose_width_finds_the_known_optimum_of_a_cost_table(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows, max_width = 5, 9
    estimates = [sorted(torch.rand(int(n), generator=generator).tolist(), reverse=True)
                 for n in torch.randint(0, 8, (rows,), generator=generator)]
    costs = sorted((10 + 40 * torch.rand(max_width, generator=generator)).tolist())  # rising with the width
    expected = torch.stack([expected_by_width(torch.tensor(e), max_width) for e in estimates])
    assert choose_width(expected, costs) == brute_force_width(estimates, costs)


def test_a_node_is_worth_less_at_many_rows_than_at_one() -> None:
    """On a CPU-like table (width costs more per row at 16 rows) the same trees get fewer nodes."""
    estimates = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02])
    one_row = [10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0, 13.5, 14.0]  # widths nearly free
    sixteen = [27.0, 32.0, 40.0, 43.0, 52.0, 60.0, 68.0, 75.0, 84.0]  # measured shape on 1 core
    expected = expected_by_width(estimates, 9)
    at_one = choose_width(expected[None], one_row)
    at_sixteen = choose_width(expected[None].expand(16, -1), sixteen)
    assert at_one == brute_force_width([estimates.tolist()], one_row) == 6
    assert at_sixteen == brute_force_width([estimates.tolist()] * 16, sixteen) == 4
    assert at_one - 1 == choose_num_nodes(estimates, one_row)  # one request: the single-request choice


def test_one_measured_width_scales_the_curve_and_keeps_its_shape() -> None:
    cost = BatchCost(max_width=9)
    shape = {1: {1: 0.010, 5: 0.012, 9: 0.014}, 16: {1: 0.027, 5: 0.043, 9: 0.073}}
    for rows, points in shape.items():
        for width, seconds in points.items():
            cost.calibrate(rows, width, seconds)
    calibrated = cost.table(16, 128)
    cost.observe(16, 9, 300, 2 * 0.073)  # a longer context, measured at one width only: twice as slow
    scaled = cost.table(16, 300)
    assert scaled == pytest.approx([2 * t for t in calibrated])
    assert all(b > a for a, b in itertools.pairwise(scaled))  # never flat: wide still costs more
    assert cost.table(16, 128) == pytest.approx(scaled)  # the nearest measured band stands in
    widths = torch.ones(16, 9, dtype=torch.float64)  # no node worth anything: root only
    assert choose_width(widths, scaled) == 1


def test_row_counts_between_calibrated_ones_are_interpolated() -> None:
    cost = BatchCost(max_width=2)
    for rows, seconds in ((4, (0.01, 0.02)), (8, (0.02, 0.04))):
        for width, value in enumerate(seconds, start=1):
            cost.calibrate(rows, width, value)
    assert cost.table(6, 64) == pytest.approx([0.015, 0.03])
    assert cost.table(16, 64) == pytest.approx([0.04, 0.08])  # extended past the largest
    assert cost.table(1, 64) == pytest.approx([0.01, 0.02])  # the nearest below the smallest


def test_without_calibration_the_first_measurements_are_the_shape() -> None:
    cost = BatchCost(max_width=3)
    assert not cost.is_known and cost.table(1, 10) == [1.0, 1.0, 1.0]
    cost.observe(1, 1, 10, 0.01)
    cost.observe(1, 3, 10, 0.03)
    assert cost.is_known and cost.table(1, 10) == pytest.approx([0.01, 0.02, 0.03])

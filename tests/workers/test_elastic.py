"""Speculation stepping aside under load (workers/elastic.py): the gate's rule and the verifier's borrowed cores."""

from __future__ import annotations

import os

import pytest
import torch

from workers.elastic import CoreLease, SpeculationGate, core_lease


def test_the_gate_shuts_at_its_count_and_opens_at_half_of_it() -> None:
    gate = SpeculationGate(4)
    changes = [(count, gate.update(count), gate.is_shut) for count in [1, 3, 4, 5, 3, 16, 3, 2, 3, 1, 4]]
    assert changes == [(1, False, False), (3, False, False), (4, True, True), (5, False, True), (3, False, True),
                       (16, False, True), (3, False, True), (2, True, False), (3, False, False), (1, False, False),
                       (4, True, True)]
    assert gate.num_shut == 2 and gate.resume_at == 2


def test_a_gate_at_zero_never_shuts_and_a_negative_one_is_refused() -> None:
    gate = SpeculationGate(0)
    assert not any(gate.update(count) for count in range(0, 300, 7)) and not gate.is_shut
    with pytest.raises(ValueError, match="disable_at"):
        SpeculationGate(-1)


def test_a_gate_at_one_shuts_with_any_request_and_opens_when_none_is_left() -> None:
    gate = SpeculationGate(1)
    assert not gate.update(0) and gate.update(1) and gate.is_shut
    assert not gate.update(1) and gate.update(0) and not gate.is_shut


def test_the_lease_widens_the_main_threads_cores_and_torch_threads_and_gives_them_back() -> None:
    cores = sorted(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    own, lent = cores[:1], cores[1:] or cores[:1]  # on a one-core machine there is nothing to lend
    try:
        os.sched_setaffinity(0, own)
        torch.set_num_threads(1)
        lease = CoreLease(own, 1, lent)
        assert lease.gains == (len(cores) > 1)
        lease.take()
        assert sorted(os.sched_getaffinity(0)) == cores if lease.gains else own
        assert torch.get_num_threads() == (len(cores) if lease.gains else 1)
        assert torch.equal(torch.ones(64, 64) @ torch.ones(64, 64), torch.full((64, 64), 64.0))  # works widened
        lease.give_back()
        assert sorted(os.sched_getaffinity(0)) == own and torch.get_num_threads() == 1 and not lease.is_held
        lease.give_back()  # twice is harmless
        assert sorted(os.sched_getaffinity(0)) == own
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)


def test_a_lease_is_made_only_for_pinned_cpu_workers_with_cores_to_lend() -> None:
    lease = core_lease([1], 1, [0], "cpu", "cpu")
    assert lease is not None and lease.own_cores == [1] and lease.wide_cores == [0, 1] and lease.own_threads == 1
    assert core_lease([2, 3], None, [0, 1], "cpu", "cpu").own_threads == 2  # type: ignore[union-attr]
    assert core_lease([1], 1, [0], "cuda:0", "cpu") is None  # a GPU verifier gains nothing from CPU cores
    assert core_lease([1], 1, [0], "cpu", "cuda:1") is None
    assert core_lease(None, 1, [0], "cpu", "cpu") is None  # unpinned: it already runs anywhere
    assert core_lease([1], 1, None, "cpu", "cpu") is None
    assert core_lease([0, 1], 2, [1], "cpu", "cpu") is None  # the drafter's cores are already the verifier's

"""The runtime's aggregate metrics from worker heartbeats: busy and idle fractions."""

from __future__ import annotations

import pytest

from runtime.metrics import RuntimeMetrics


def test_drafter_idle_is_the_time_it_had_nothing_to_grow() -> None:
    metrics = RuntimeMetrics()
    metrics.started(now=10.0)
    metrics.started(now=12.0)  # two seconds of activity
    metrics.worker_stats = {"d0": {"role": "drafter", "compute_s": 0.5}, "d1": {"role": "drafter", "compute_s": 1.5},
                            "v0": {"role": "verifier", "compute_s": 1.9}}
    snapshot = metrics.snapshot(0, 0, [])
    assert snapshot["drafter_idle_fraction"] == pytest.approx(0.5)  # 2 of 4 drafter-seconds computing
    assert RuntimeMetrics().snapshot(0, 0, [])["drafter_idle_fraction"] is None  # no drafter

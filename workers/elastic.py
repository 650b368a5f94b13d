"""Speculation that steps aside under load: a gate on the number of requests a worker holds, and (opt-in)
the cores a CPU verifier borrows from its drafter while the gate is shut.

Drafting pays when the verifier's forward is latency-bound: one request, or a few. With many rows a
verification forward is compute-bound, a tree's extra nodes cost nearly what they save, and on a CPU the
drafter's cores are worth more to the verifier than the drafter's trees (docs/performance.md, "Speculation
under load"). vLLM turns speculation off above a batch size for the same reason (`disable_by_batch_size`).

`SpeculationGate` is the rule, a pure function of the request count with hysteresis: shut when a worker
holds `disable_at` requests or more, open again at `disable_at // 2` or fewer. The verifier and the drafter
each run it on their own count of the same requests (the verifier counts its prefilled ones: the
coordinator opens a request on the drafter when its prefill is done and releases it on both), so no
message is needed. The counts differ only while a message is in flight or a worker finishes its current
step; that costs a root-only or an idle step, or one step sharing a core, never a wrong token (a
verification without nodes commits exactly the target's next token).

`CoreLease` (`verifier.borrow_drafter_cores`, off by default) widens the verifier's main thread to its
drafter's cores and raises torch's thread count while the gate is shut, and gives them back when it opens.
On the 2-core demo layout it lost: a second thread sped the 16-row forward by 1.0-1.2x in-process, and in a
deployment its OpenMP barriers stall whenever the coordinator, the client or the idle drafter's commit
work runs on that core (docs/performance.md, "Speculation under load").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)


class SpeculationGate:
    """Open (speculate) or shut (verify root-only, the drafter idles) by the number of requests held."""

    def __init__(self, disable_at: int = 0) -> None:
        if disable_at < 0:
            raise ValueError(f"disable_at must be >= 0 (0 = never), got {disable_at}")
        self.disable_at = disable_at
        self.is_shut = False
        self.num_shut = 0  # times it shut

    @property
    def resume_at(self) -> int:
        """The count at or below which a shut gate opens again."""
        return self.disable_at // 2

    def update(self, count: int) -> bool:
        """The gate for a worker that now holds `count` requests; True if it changed."""
        if not self.disable_at:
            return False
        if not self.is_shut and count >= self.disable_at:
            self.is_shut = True
            self.num_shut += 1
            return True
        if self.is_shut and count <= self.resume_at:
            self.is_shut = False
            return True
        return False


class CoreLease:
    """The verifier's placement while speculation is shut: its own cores plus the drafter's, one torch
    thread per core; `give_back()` restores its own. Affinity applies to the calling (main) thread and to
    the threads torch starts from it; the I/O thread keeps its core."""

    def __init__(self, own_cores: Sequence[int], own_threads: int, drafter_cores: Sequence[int]) -> None:
        self.own_cores = sorted(set(own_cores))
        self.own_threads = max(1, own_threads)
        self.wide_cores = sorted(set(own_cores) | set(drafter_cores))
        self.is_held = False

    @property
    def gains(self) -> bool:
        return len(self.wide_cores) > len(self.own_cores)

    def take(self) -> None:
        if self.is_held or not self.gains:
            return
        os.sched_setaffinity(0, self.wide_cores)
        torch.set_num_threads(len(self.wide_cores))
        self.is_held = True
        log.info("speculation paused: the verifier runs on cores %s with %d threads", self.wide_cores,
                 len(self.wide_cores))

    def give_back(self) -> None:
        if not self.is_held:
            return
        torch.set_num_threads(self.own_threads)
        os.sched_setaffinity(0, self.own_cores)
        self.is_held = False
        log.info("speculation resumed: the verifier is back on cores %s with %d threads", self.own_cores,
                 self.own_threads)


def core_lease(verifier_cores: Sequence[int] | None, verifier_threads: int | None, drafter_cores: Sequence[int] | None,
               verifier_device: str, drafter_device: str | None) -> CoreLease | None:
    """A lease when both workers are pinned CPU processes with cores to lend, else None."""
    if verifier_device != "cpu" or drafter_device != "cpu" or not verifier_cores or not drafter_cores:
        return None
    lease = CoreLease(verifier_cores, verifier_threads or len(verifier_cores), drafter_cores)
    return lease if lease.gains else None

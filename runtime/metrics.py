"""Deployment-wide live metrics (DESIGN.md §11 definitions), served to clients by the coordinator."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from runtime.stats import SpecStats


@dataclass
class RuntimeMetrics:
    spec: SpecStats = field(default_factory=SpecStats)  # all verifications of all requests
    num_finished: int = 0  # every finish: stop, length and cancelled
    num_cancelled: int = 0  # finished as cancelled (a Cancel, a client that hung up or vanished)
    num_errors: int = 0
    num_generated: int = 0
    num_stale_dropped: int = 0
    num_malformed_dropped: int = 0
    num_workers_refused: int = 0
    num_drafts_forwarded: int = 0
    num_auth_refused: int = 0  # peers whose CURVE handshake failed (no key, or a key not let in)
    verifier_compute_s: float = 0.0
    first_request_at: float | None = None
    last_activity_at: float = 0.0
    worker_stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # worker id -> its last heartbeat

    def started(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.first_request_at is None:
            self.first_request_at = now
        self.last_activity_at = now

    def snapshot(self, num_active: int, num_queued: int, workers: list[dict[str, Any]]) -> dict[str, Any]:
        wall = max((self.last_activity_at - self.first_request_at) if self.first_request_at else 0.0, 1e-9)
        drafters = [s for s in self.worker_stats.values() if s.get("role") == "drafter"]
        hits = sum(s.get("num_reroot_hits", 0) for s in drafters)
        commits = sum(s.get("num_commits", 0) for s in drafters)
        steps = sum(s.get("num_grow_steps", 0) for s in drafters)
        drafter_s = sum(s.get("compute_s", 0.0) for s in drafters)
        verifiers = [s for s in self.worker_stats.values() if s.get("role") == "verifier"]
        return {
            **{k: v for k, v in self.spec.as_dict().items() if k != "elapsed_s"},
            "tokens_per_s": self.num_generated / wall,
            "verifier_busy_fraction": min(self.verifier_compute_s / wall, 1.0),
            "drafter_busy_fraction": min(drafter_s / wall, 1.0),
            # the share of time the drafters had nothing to grow (their trees full, or no request)
            "drafter_idle_fraction": (max(1.0 - drafter_s / (wall * len(drafters)), 0.0) if drafters else None),
            "drafter_reroot_hit_rate": hits / commits if commits else 0.0,
            "drafter_steps": steps,
            "drafter_steps_per_verification": steps / max(self.spec.num_verifications, 1),
            "num_drafts_forwarded": self.num_drafts_forwarded,
            "verifier_busy_s": self.verifier_compute_s,
            "num_drafter_reroot_hits": hits,
            "num_drafter_commits": commits,
            # full living trees that dropped their least likely leaves to keep growing (tree.prune_living)
            "num_drafter_prunes": sum(s.get("num_prunes", 0) for s in drafters),
            "num_drafter_nodes_pruned": sum(s.get("num_nodes_pruned", 0) for s in drafters),
            "num_prefixes_shared": sum(s.get("num_prefixes_shared", 0) for s in verifiers),  # n > 1 samples
            # speculation stepping aside under load (speculation.disable_at_requests; workers/elastic.py)
            "num_paused_batches": sum(s.get("num_paused_batches", 0) for s in verifiers),
            "num_speculation_pauses": sum(s.get("num_speculation_pauses", 0) for s in verifiers),
            "num_verifiers_paused": sum(s.get("speculation_paused", 0) for s in verifiers),
            "num_finished": self.num_finished,
            "num_cancelled": self.num_cancelled,
            "num_errors": self.num_errors,
            "num_generated": self.num_generated,
            "num_active": num_active,
            "num_queued": num_queued,
            "num_stale_dropped": self.num_stale_dropped,
            "num_malformed_dropped": self.num_malformed_dropped,
            "num_workers_refused": self.num_workers_refused,
            "num_auth_refused": self.num_auth_refused,
            "workers": workers,
        }

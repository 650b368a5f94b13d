"""Prometheus metrics named after vLLM's (`tandem:` for `vllm:`), so dashboards carry over.

Counters and gauges are read from the coordinator's metrics dict at scrape time (a custom collector);
the latency histograms are measured here, in the HTTP server, per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)

# (metric name without _total, key in the coordinator's metrics dict, help)
_COUNTERS = (
    ("tandem:spec_decode_num_drafts", "num_verifications", "Draft trees verified (one per verification)."),
    ("tandem:spec_decode_num_draft_tokens", "num_draft_tokens", "Draft tokens sent for verification."),
    ("tandem:generation_tokens", "num_generated", "Tokens generated (committed) for all requests."),
    ("tandem:request_success", "num_finished", "Requests finished (stop, length or cancelled)."),
    ("tandem:request_cancelled", "num_cancelled", "Requests finished as cancelled (a Cancel or a client that left)."),
    ("tandem:request_errors", "num_errors", "Requests ended by an error (timeout, worker failure)."),
    ("tandem:verifier_busy_seconds", "verifier_busy_s", "Verifier compute time, summed over verifiers."),
    ("tandem:spec_decode_reroot_hits", "num_reroot_hits", "Verifications after which the verifier's held "
                                                          "tree spelled every committed token (re-rooted)."),
    ("tandem:spec_decode_drafter_reroot_hits", "num_drafter_reroot_hits", "Commits whose tokens were all in the "
                                                                          "drafter's living tree (re-rooted)."),
    ("tandem:spec_decode_drafts_forwarded", "num_drafts_forwarded", "Draft trees streamed to verifiers."),
    ("tandem:spec_decode_drafter_commits", "num_drafter_commits", "Commits applied by drafters."),
    ("tandem:spec_decode_drafter_prunes", "num_drafter_prunes", "Drafter steps that dropped a full living tree's "
                                                                 "least likely leaves to keep growing."),
    ("tandem:spec_decode_paused_batches", "num_paused_batches", "Verification forwards run root-only because "
                                                                "speculation was paused under load."),
    ("tandem:num_stale_dropped", "num_stale_dropped", "Messages dropped because their epoch was stale."),
    ("tandem:num_malformed_dropped", "num_malformed_dropped", "Malformed messages dropped."),
)


class SnapshotCollector(Collector):
    """Turns the latest coordinator metrics dict into metric families; `snapshot` is set before a scrape."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        data = self.snapshot
        for name, key, help_text in _COUNTERS:
            if key in data:  # keys the coordinator does not report (yet) are left out, not faked
                yield CounterMetricFamily(name, help_text, value=float(data[key]))
        accepted = [int(a) for a in data.get("accepted_per_depth", [])]
        yield CounterMetricFamily("tandem:spec_decode_num_accepted_tokens", "Draft tokens accepted.",
                                  value=float(sum(accepted)))
        per_pos = CounterMetricFamily("tandem:spec_decode_num_accepted_tokens_per_pos",
                                      "Draft tokens accepted, per position (depth - 1).", labels=["position"])
        for position, count in enumerate(accepted):
            per_pos.add_metric([str(position)], float(count))
        yield per_pos
        yield GaugeMetricFamily("tandem:num_requests_running", "Requests being decoded.",
                                value=float(data.get("num_active", 0)))
        yield GaugeMetricFamily("tandem:num_requests_waiting", "Requests queued for a verifier.",
                                value=float(data.get("num_queued", 0)))
        yield GaugeMetricFamily("tandem:spec_decode_mean_tau", "Tokens committed per verification.",
                                value=float(data.get("tau", 0.0)))
        yield GaugeMetricFamily("tandem:spec_decode_verifiers_paused", "Verifiers whose speculation is paused "
                                "under load (speculation.disable_at_requests).",
                                value=float(data.get("num_verifiers_paused", 0)))
        workers = GaugeMetricFamily("tandem:num_workers", "Workers joined, per role.", labels=["role"])
        for role in ("verifier", "drafter"):
            workers.add_metric([role], float(sum(w.get("role") == role for w in data.get("workers", []))))
        yield workers


class ServerMetrics:
    """The HTTP server's registry: the coordinator's counters plus latency histograms measured here."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)
        self.time_to_first_token = Histogram("tandem:time_to_first_token_seconds", "Time to the first token.",
                                             buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.e2e_latency = Histogram("tandem:e2e_request_latency_seconds", "Request latency, end to end.",
                                     buckets=_LATENCY_BUCKETS, registry=self.registry)

    def render(self, snapshot: dict[str, Any]) -> bytes:
        """Prometheus text for this coordinator snapshot (the event loop runs one render at a time)."""
        self.collector.snapshot = snapshot
        return generate_latest(self.registry)

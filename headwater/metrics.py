"""Prometheus metrics, names prefixed `headwater_`, served at `GET /metrics` (headwater.api.metrics).

`headwater serve` gives every process it forks (its API processes and its worker) one directory,
`PROMETHEUS_MULTIPROC_DIR`, so that a scrape of any API process adds up all of them.
prometheus-client picks how it stores values when it is first imported, so nothing imports it
until `metrics()` is first called: after `serve` has set the directory. Without the directory
(a test's app, `headwater worker` on its own) each process counts in its own memory.

Consumer lag is not counted here but read from the store at each scrape: it is right whatever
machine the workers run on.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from headwater.events import EventResult

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Requests are milliseconds to seconds; a group commit is a millisecond to a few hundred.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GROUP_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
# A route that matched nothing is one label, not one per path a scanner tried.
UNMATCHED = "unmatched"


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.accepted = Counter("headwater_events_accepted", "Events stored", ["tenant", "mode"])
        self.duplicates = Counter(
            "headwater_events_duplicate", "Events answered as duplicates of stored ones", ["tenant", "mode"]
        )
        self.rejected = Counter(
            "headwater_events_rejected", "Events rejected, by their first error's code", ["tenant", "mode", "reason"]
        )
        self.refusals = Counter("headwater_rate_limit_refusals", "Requests refused by a rate limit (429)", ["tenant"])
        self.queue = Gauge(
            "headwater_write_queue_events", "Events waiting for the log's writer", multiprocess_mode="livesum"
        )
        self.group_events = Histogram(
            "headwater_group_commit_events", "Events per group commit of the log", buckets=GROUP_BUCKETS
        )
        self.group_seconds = Histogram(
            "headwater_group_commit_seconds", "Time of one group commit of the log", buckets=LATENCY_BUCKETS
        )
        self.requests = Histogram(
            "headwater_request_seconds", "HTTP requests, by route template", ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.firings = Counter("headwater_trigger_firings", "Trigger firings (actions) written", ["tenant", "mode"])
        self.webhook_attempts = Counter(
            "headwater_webhook_attempts", "Webhook delivery attempts, by what became of the delivery", ["outcome"]
        )
        self.dead_letters = Counter(
            "headwater_dead_letters", "Events a consumer could not apply and set aside", ["consumer"]
        )

    def ingested(self, tenant: str, mode: str, results: Iterable[EventResult]) -> None:
        """Count one request's results: a few increments per request, not one per event."""
        accepted = duplicates = 0
        reasons: Tally[str] = Tally()
        for result in results:
            if result.status == "accepted":
                accepted += 1
            elif result.status == "duplicate":
                duplicates += 1
            else:
                reasons[result.errors[0].code if result.errors else "rejected"] += 1
        if accepted:
            self.accepted.labels(tenant, mode).inc(accepted)
        if duplicates:
            self.duplicates.labels(tenant, mode).inc(duplicates)
        for reason, count in reasons.items():
            self.rejected.labels(tenant, mode, reason).inc(count)

    def group(self, events: int, started: float) -> None:
        self.group_events.observe(events)
        self.group_seconds.observe(time.perf_counter() - started)


@cache
def metrics() -> Metrics:
    return Metrics()


def exposition(extra: Collector | None = None) -> bytes:
    """The text format of every process's metrics (or this one's), then `extra`'s."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics()  # every metric named, at zero, before the first event
    registry = REGISTRY
    if os.environ.get(MULTIPROCESS_DIR):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    text = generate_latest(registry)
    if extra is not None:
        once = CollectorRegistry()
        once.register(extra)
        text += generate_latest(once)
    return text

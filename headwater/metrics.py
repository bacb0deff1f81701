"""Prometheus metrics, names prefixed `headwater_`, served at `GET /metrics` (headwater.api.metrics).

`headwater serve` gives every process it forks (its API processes and its worker) one directory,
`PROMETHEUS_MULTIPROC_DIR`, so that a scrape of any API process adds up all of them.
prometheus-client picks how it stores values when it is first imported, so nothing imports it
until `metrics()` is first called: after `serve` has set the directory. Without the directory
(a test's app, `headwater worker` on its own) each process counts in its own memory.

Consumer lag is not counted here but read from the store at each scrape: it is right whatever
machine the workers run on.

The counts made on the ingest path (events by outcome, requests, group commits, the write queue)
are held in plain dicts first and written to prometheus-client's values at most FLUSH_SECONDS
later, by a thread of each process, and before each scrape that process answers. Writing them
through at once took about 11% of a single-event request's time under py-spy (a label lookup,
a lock, a pid check and an mmap write per value, several values per request); held, a request
adds to a dict.
A scrape of one API process may so miss up to FLUSH_SECONDS of another's counts, never lose them.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram
    from prometheus_client.registry import Collector

    from headwater.events import EventResult

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Requests are milliseconds to seconds; a group commit is a millisecond to a few hundred.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GROUP_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
# A route that matched nothing is one label, not one per path a scanner tried.
UNMATCHED = "unmatched"
FLUSH_SECONDS = 0.5


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

        self._held = _Held()

    def ingested(self, tenant: str, mode: str, results: Iterable[EventResult]) -> None:
        """Count one request's results: a few additions per request, not one per event."""
        accepted = duplicates = 0
        reasons: dict[str, int] = {}
        for result in results:
            if result.status == "accepted":
                accepted += 1
            elif result.status == "duplicate":
                duplicates += 1
            else:
                reason = result.errors[0].code if result.errors else "rejected"
                reasons[reason] = reasons.get(reason, 0) + 1
        held = self._held
        with held.lock:
            if accepted:
                held.add(self.accepted, (tenant, mode), accepted)
            if duplicates:
                held.add(self.duplicates, (tenant, mode), duplicates)
            for reason, count in reasons.items():
                held.add(self.rejected, (tenant, mode, reason), count)
        held.started()

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        held = self._held
        with held.lock:
            held.observe(self.requests, (method, route, str(status)), seconds)
        held.started()

    def queued(self, events: int) -> None:
        """The write queue's length now (a gauge: the last value held is the one written)."""
        self._held.queue = events
        self._held.started()

    def group(self, events: int, started: float) -> None:
        seconds = time.perf_counter() - started
        held = self._held
        with held.lock:
            held.observe(self.group_events, (), events)
            held.observe(self.group_seconds, (), seconds)
        held.started()

    def flush(self) -> None:
        """Write what is held to prometheus-client's values (and, in multiprocess mode, to this
        process's files). One flush at a time: a scrape's waits for the thread's to finish."""
        held = self._held
        with held.flushing:
            with held.lock:
                counts, held.counts = held.counts, {}
                observed, held.observed = held.observed, {}
                queue, held.queue = held.queue, None
            for (counter, labels), amount in counts.items():
                counter.labels(*labels).inc(amount)
            for (histogram, labels), (buckets, total) in observed.items():
                child: Any = histogram.labels(*labels) if labels else histogram
                # Histogram.observe's own writes (prometheus-client keeps each bucket's own count,
                # not a cumulative one), made once per bucket rather than once per observation.
                child._sum.inc(total[0])
                for index, count in enumerate(buckets):
                    if count:
                        child._buckets[index].inc(count)
            if queue is not None:
                self.queue.set(queue)


class _Held:
    """Counts not yet written, and the thread that writes them every FLUSH_SECONDS."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.flushing = threading.Lock()
        self.counts: dict[tuple[Counter, tuple[str, ...]], float] = {}
        # Per histogram and labels: each bucket's count (prometheus-client's order), and the sum.
        self.observed: dict[tuple[Histogram, tuple[str, ...]], tuple[list[int], list[float]]] = {}
        self.queue: int | None = None
        self.thread: threading.Thread | None = None

    def add(self, counter: Counter, labels: tuple[str, ...], amount: float) -> None:
        key = (counter, labels)
        self.counts[key] = self.counts.get(key, 0) + amount

    def observe(self, histogram: Histogram, labels: tuple[str, ...], value: float) -> None:
        key = (histogram, labels)
        bounds: list[float] = histogram._upper_bounds
        held = self.observed.get(key)
        if held is None:
            held = self.observed[key] = ([0] * len(bounds), [0.0])
        # The first bucket whose bound is >= value: where Histogram.observe counts it.
        held[0][bisect_left(bounds, value)] += 1
        held[1][0] += value

    def started(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=_flush_every, name="headwater-metrics", daemon=True)
            self.thread.start()


def _flush_every() -> None:
    while True:
        time.sleep(FLUSH_SECONDS)
        if _metrics is not None:
            _metrics.flush()


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        with _metrics_lock:
            if _metrics is None:
                _metrics = Metrics()
    return _metrics


def flush() -> None:
    """Write what this process holds, if it has counted anything (at a scrape, and at a stop)."""
    if _metrics is not None:
        _metrics.flush()


def _forked() -> None:
    # The parent's held counts are the parent's to write; a forked child starts with none, and
    # no thread (threads do not cross a fork).
    if _metrics is not None:
        _metrics._held = _Held()


os.register_at_fork(after_in_child=_forked)


def exposition(extra: Collector | None = None) -> bytes:
    """The text format of every process's metrics (or this one's), then `extra`'s."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics().flush()  # every metric named, at zero, before the first event; this process's counts
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

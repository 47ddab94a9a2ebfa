"""Prometheus metrics: histograms fed by each committed batch, everything else read when scraped.

The histograms (batch size, commit and fsync latency) are observed by ``Metrics.observe`` — the consumer's
``on_commit`` hook — in the consumer's thread. Counters and gauges that the consumer already keeps (events by
type, dead letters by reason, errors by kind) and the Redis-side figures are not copied: a collector turns the
same snapshot that JSON ``/metrics`` answers into Prometheus families at scrape time, so both views always agree.
Each ``Metrics`` has its own registry (several apps in one test process never collide).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from .store import CommitResult

PREFIX = "tasklogger"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

#: JSON snapshot key -> (metric name, help). Counters first, then gauges.
COUNTERS = {
    "events_written": ("events_written", "Events written to task files"),
    "duplicates_skipped": ("duplicates_skipped", "Redeliveries recognised and skipped"),
    "entries_acked": ("entries_acked", "Stream entries acknowledged"),
    "batches": ("batches", "Batches committed"),
    "tasks_processed": ("tasks_processed", "Tasks whose final result this process wrote"),
}
GAUGES = {
    "queue_depth": ("queue_depth", "Length of the stream (XLEN)"),
    "queue_lag": ("queue_lag", "Entries of the stream the group has not read yet"),
    "pending": ("pending", "Entries read by the group and not acknowledged yet"),
    "oldest_pending_age_seconds": ("oldest_pending_age_seconds", "Age of the oldest pending entry"),
    "seconds_since_last_batch": ("seconds_since_last_batch", "Seconds since the last committed batch"),
    "uptime_seconds": ("uptime_seconds", "Seconds since the process started"),
}


class Metrics:
    """The Prometheus registry of one process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.batch_entries = Histogram(
            f"{PREFIX}_batch_entries", "Entries per committed batch", buckets=SIZE_BUCKETS, registry=self.registry
        )
        self.commit_seconds = Histogram(
            f"{PREFIX}_commit_seconds",
            "Wall time to commit a batch (write, make durable)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.fsync_seconds = Histogram(
            f"{PREFIX}_fsync_seconds",
            "Wall time a batch waited for the disk to make it durable (fsync/syncfs)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._snapshot: Callable[[], dict[str, Any]] | None = None
        self.registry.register(_SnapshotCollector(self))

    def observe(self, result: CommitResult) -> None:
        """Record one committed batch (the consumer's on_commit hook)."""
        self.batch_entries.observe(result.entries)
        self.commit_seconds.observe(result.commit_seconds)
        self.fsync_seconds.observe(result.sync_seconds)

    def bind(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Where scrape-time figures come from: the JSON /metrics snapshot (with an ``index`` member)."""
        self._snapshot = snapshot

    def exposition(self, openmetrics: bool = False) -> tuple[bytes, str]:
        """(body, content type) of the text exposition format, or OpenMetrics when asked for."""
        if openmetrics:
            return generate_openmetrics(self.registry), OPENMETRICS_TYPE  # type: ignore[no-untyped-call]
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _SnapshotCollector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []  # families depend on the snapshot; nothing to pre-register

    def collect(self) -> Iterable[Metric]:
        if self.metrics._snapshot is None:
            return []
        return list(families(self.metrics._snapshot()))


def families(snap: dict[str, Any]) -> Iterable[Metric]:
    """Prometheus families of a JSON /metrics snapshot (null figures are left out, not reported as 0)."""
    for key, (name, text) in COUNTERS.items():
        if snap.get(key) is not None:
            yield CounterMetricFamily(f"{PREFIX}_{name}", text, value=snap[key])
    for key, (name, text) in GAUGES.items():
        if snap.get(key) is not None:
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=snap[key])
    yield from _labelled(snap, "events_by_type", "events", "Events written, by event type", "type")
    yield from _labelled(snap, "dead_letters_by_reason", "dead_letters", "Entries dead-lettered, by reason", "reason")
    yield from _labelled(snap, "errors", "errors", "Redis and disk errors, by kind", "kind")
    up = GaugeMetricFamily(f"{PREFIX}_redis_up", "1 while Redis answers")
    up.add_metric([], 1.0 if snap.get("redis") == "ok" else 0.0)
    yield up
    if "consumer_state" in snap:
        running = GaugeMetricFamily(f"{PREFIX}_consumer_running", "1 while the consumer runs without a fault")
        running.add_metric([], 1.0 if snap["consumer_state"] == "running" else 0.0)
        yield running
    index = snap.get("index") or {}
    if index.get("pending_tasks") is not None:
        yield GaugeMetricFamily(
            f"{PREFIX}_index_pending_tasks", "Tasks written but not indexed yet", value=index["pending_tasks"]
        )
        lag = index.get("lag_seconds")
        yield GaugeMetricFamily(
            f"{PREFIX}_index_lag_seconds",
            "How long the oldest task waiting to be indexed has waited (0 when none waits)",
            value=0.0 if lag is None else lag,
        )
        yield CounterMetricFamily(f"{PREFIX}_index_errors", "Failed index updates", value=index.get("errors", 0))
    if index.get("tasks") is not None:
        yield GaugeMetricFamily(f"{PREFIX}_index_tasks", "Tasks in the index", value=index["tasks"])


def _labelled(snap: dict[str, Any], key: str, name: str, text: str, label: str) -> Iterable[Metric]:
    values = snap.get(key)
    if values is None:
        return
    family = CounterMetricFamily(f"{PREFIX}_{name}", text, labels=[label])
    for value_label, value in sorted(values.items()):
        family.add_metric([str(value_label)], value)
    yield family

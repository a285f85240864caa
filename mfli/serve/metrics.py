"""Prometheus metrics of the retrieval service (``GET /metrics``, text exposition format).

Each app has its own registry, so several apps in one process (tests) never share counters.

==========================================  =========  =================================================
metric                                      type       labels / meaning
==========================================  =========  =================================================
``mfli_request_seconds``                    histogram  ``mode`` (trigger, user, rejected after parsing): handler time
``mfli_batch_size``                         histogram  requests answered by one retriever call
``mfli_request_errors_total``               counter    ``kind``: validation, too_large, bad_json, overloaded,
                                                       deadline, no_snapshot, internal
``mfli_queue_depth``                        gauge      requests waiting for the batcher
``mfli_snapshot_info``                      gauge      1, labelled with the served ``snapshot_id``
``mfli_snapshot_age_seconds``               gauge      now - the snapshot's ``created_at``
``mfli_snapshot_loaded``                    gauge      1 when a verified snapshot is served (= ready)
``mfli_deltas_applied``                     gauge      deltas applied on top of the snapshot
``mfli_refresh_failures_total``             counter    failed refreshes (the previous snapshot kept serving)
==========================================  =========  =================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

#: Error kinds counted by ``mfli_request_errors_total`` (all pre-created at 0 so rates start at once).
ERROR_KINDS = ("validation", "too_large", "bad_json", "overloaded", "deadline", "no_snapshot", "internal")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _LiveCollector(Collector):
    """Snapshot gauges read from the live retriever at scrape time (never stale, no bookkeeping)."""

    def __init__(self, live: Any, queue_depth: Callable[[], int]) -> None:
        self._live = live
        self._queue_depth = queue_depth

    def collect(self) -> Iterator[Any]:
        state = self._live.state
        info = GaugeMetricFamily("mfli_snapshot_info", "Served snapshot (value 1)", labels=["snapshot_id"])
        age = GaugeMetricFamily("mfli_snapshot_age_seconds", "Seconds since the served snapshot was created")
        loaded = GaugeMetricFamily("mfli_snapshot_loaded", "1 when a verified snapshot is served")
        deltas = GaugeMetricFamily("mfli_deltas_applied", "Deltas applied on top of the served snapshot")
        loaded.add_metric([], 0.0 if state is None else 1.0)
        if state is not None:
            info.add_metric([state.snapshot_id], 1.0)
            created = _parse_time(state.manifest.get("created_at"))
            if created is not None:
                age.add_metric([], max(0.0, (datetime.now(UTC) - created).total_seconds()))
            deltas.add_metric([], float(len(state.deltas)))
        failures = CounterMetricFamily("mfli_refresh_failures", "Refreshes that failed (previous snapshot kept)")
        failures.add_metric([], float(getattr(self._live, "refresh_failures", 0)))
        depth = GaugeMetricFamily("mfli_queue_depth", "Requests waiting for the batcher")
        depth.add_metric([], float(self._queue_depth()))
        yield from (info, age, loaded, deltas, failures, depth)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


class ServiceMetrics:
    """The service's metrics in their own registry.

    Args:
        live: the :class:`~mfli.serve.live.LiveRetriever` (read at scrape time).
        queue_depth: callable returning the number of queued requests.
    """

    def __init__(self, live: Any, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("mfli_request_seconds", "POST /retrieve handler time", ["mode"],
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("mfli_batch_size", "Requests per retriever call", buckets=_BATCH_BUCKETS,
                                    registry=self.registry)
        self.errors = Counter("mfli_request_errors", "Refused or failed requests", ["kind"], registry=self.registry)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)
        self.registry.register(_LiveCollector(live, queue_depth))

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

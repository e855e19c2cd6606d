"""Prometheus metrics of one deployer worker, served on ``--metrics-port`` (``/metrics``)."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PULL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class WorkerMetrics(Collector):
    """Counters and histograms updated where things happen; gauges (replicas by state,
    cache bytes) from the latest tick, read at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.pull_seconds = Histogram(
            "modelplane_worker_pull_duration_seconds",
            "Pulling a replica's files into the cache, by outcome (ok, error)",
            ["outcome"],
            buckets=PULL_BUCKETS,
            registry=r,
        )
        self.cache_lookups = Counter(
            "modelplane_worker_cache_lookups",
            "Files looked up in the cache on a pull, by result (hit, miss)",
            ["result"],
            registry=r,
        )
        self.cache_bytes = Counter(
            "modelplane_worker_cache_bytes",
            "Bytes of pulled files, by where they came from (hit: the cache, miss: downloaded)",
            ["result"],
            registry=r,
        )
        self.starts = Counter(
            "modelplane_worker_process_starts",
            "Serving processes started (restarts included)",
            registry=r,
        )
        self.errors = Counter(
            "modelplane_worker_errors",
            "Errors by kind (pull, action, heartbeat, register, tick, exit)",
            ["kind"],
            registry=r,
        )
        self._states: dict[str, int] = {}
        self._cache_used: Callable[[], int] = lambda: 0
        r.register(self)
        ProcessCollector(registry=r)

    def set_replicas(self, states: Iterable[str]) -> None:
        self._states = dict(Tally(states))

    def track_cache(self, used_bytes: Callable[[], int]) -> None:
        self._cache_used = used_bytes

    def collect(self) -> Iterator[Metric]:
        replicas = GaugeMetricFamily(
            "modelplane_worker_replicas", "Replicas this worker runs, by state", labels=["state"]
        )
        for state, count in sorted(self._states.items()):
            replicas.add_metric([state], count)
        yield replicas
        try:
            used = self._cache_used()
        except OSError:  # a blob evicted while we counted: report the next scrape
            return
        yield GaugeMetricFamily(
            "modelplane_worker_cache_used_bytes", "Bytes held by the local blob cache", value=used
        )

    def serve(self, address: str, port: int) -> tuple[WSGIServer, Thread]:
        """``/metrics`` on ``address:port`` from a daemon thread (port 0: any free one)."""
        server, thread = start_http_server(port, address, registry=self.registry)
        return server, thread

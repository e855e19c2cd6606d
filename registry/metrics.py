"""Prometheus metrics of the control plane, and the ASGI front that counts every request.

Each app has its own ``CollectorRegistry`` (``app.state.metrics``). With several uvicorn
worker processes (``MODELPLANE_WORKERS`` > 1) ``registry/server.py`` turns on
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``): every process writes
its samples to files there and ``/metrics``, whichever process answers, sums them all.
Gauges read from the database (replicas by state, endpoints by status, ...) are computed
at scrape time, so every process and replica reports the same truth.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)
TRANSFER_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0)


class ControlPlaneMetrics:
    """The control plane's series. ``observe_http`` keeps labelled children in a dict:
    the hot paths pay one lookup and one ``observe``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Histogram(
            "modelplane_http_request_duration_seconds",
            "HTTP requests by method, route template and status, with their latency "
            "(the _count series is the request count)",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.upload_bytes = Counter(
            "modelplane_upload_bytes", "Bytes stored by uploads", ["kind"], registry=r
        )
        self.upload_seconds = Histogram(
            "modelplane_upload_duration_seconds",
            "Upload durations (proxied: the PUT; multipart: the complete step; oneshot: "
            "the form's files)",
            ["kind"],
            buckets=TRANSFER_BUCKETS,
            registry=r,
        )
        self.download_bytes = Counter(
            "modelplane_download_bytes", "Bytes streamed by file downloads", registry=r
        )
        self.download_seconds = Histogram(
            "modelplane_download_duration_seconds",
            "File download durations (first to last byte streamed)",
            buckets=TRANSFER_BUCKETS,
            registry=r,
        )
        self.versions_created = Counter(
            "modelplane_versions_created", "Versions created", ["kind"], registry=r
        )
        self.errors = Counter(
            "modelplane_errors", "Error answers by kind (the problem type)", ["kind"], registry=r
        )
        self.webhook_deliveries = Counter(
            "modelplane_webhook_delivery_attempts",
            "Webhook delivery attempts by outcome (delivered, retry, failed)",
            ["outcome"],
            registry=r,
        )
        self.gc_blobs = Counter(
            "modelplane_gc_removed_blobs", "Blobs removed by garbage collection", registry=r
        )
        self.gc_bytes = Counter(
            "modelplane_gc_removed_bytes", "Bytes freed by garbage collection", registry=r
        )
        self._http: dict[tuple[str, str, int], Any] = {}
        # this process's memory, CPU and open files (not summed in multiprocess mode)
        ProcessCollector(registry=r)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._http.get(key)
        if child is None:
            child = self._http[key] = self.http.labels(method, route, str(status))
        child.observe(seconds)

    def render(self, database: Iterable[Metric]) -> bytes:
        """This process's series (all processes' in multiprocess mode), then ``database``."""
        if (path := os.environ.get(MULTIPROC_ENV)) is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
            out = generate_latest(registry)
        else:
            out = generate_latest(self.registry)
        scraped = CollectorRegistry(auto_describe=False)
        scraped.register(_Fixed(list(database)))
        return out + generate_latest(scraped)


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def gauge(name: str, doc: str, label: str, values: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class Observe:
    """Outermost ASGI middleware of the FastAPI app (inside CORS): the HTTP metrics of
    every request, counted by route template (what FastAPI matched; ``/serve/{deployment}``
    for the stable URL), the answers of the limits and the authentication middleware
    included."""

    def __init__(
        self, app: ASGIApp, metrics: ControlPlaneMetrics, templates: dict[str, str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, answer)
        finally:
            self.metrics.observe_http(
                scope["method"], self.route_of(scope), status, time.perf_counter() - start
            )

    def route_of(self, scope: Scope) -> str:
        """The full route template (bounded label values), never the raw path. Routes are
        found by name (unique: the operation id), as the matched route object may not
        carry the prefix its router was included under."""
        route = scope.get("route")
        if (
            route is not None
            and not scope.get("root_path")
            and (template := self.templates.get(route.name)) is not None
        ):
            return template
        if scope["path"].startswith("/serve/"):
            return "/serve/{deployment}"
        if root := scope.get("root_path"):  # a mounted app (the /ui dashboard): its prefix
            return f"{root}/*"
        return "unmatched"

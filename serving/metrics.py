"""Prometheus metrics of one serving process, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


class ServingMetrics:
    def __init__(self, model: str, version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model": model, "version": version}
        self._requests = Counter(
            "modelplane_inference_requests",
            "Infer calls answered, by outcome (ok, bad_request, not_found, overloaded, error)",
            [*labels, "outcome"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "modelplane_inference_request_seconds",
            "Infer call latency inside the server, by outcome",
            [*labels, "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "modelplane_inference_batch_size",
            "Calls stacked into one model run",
            list(labels),
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        ).labels(**labels)
        self._queue_depth = Gauge(
            "modelplane_inference_queue_depth",
            "Infer calls queued or running",
            list(labels),
            registry=self.registry,
        ).labels(**labels)
        self.load_seconds = Gauge(
            "modelplane_model_load_seconds",
            "Time to verify, load and warm up the model",
            list(labels),
            registry=self.registry,
        ).labels(**labels)
        self._labels = labels
        self._bound: dict[str, tuple[Counter, Histogram]] = {}

    def observe(self, outcome: str, seconds: float) -> None:
        bound = self._bound.get(outcome)
        if bound is None:  # children are bound once per outcome: labels() is not free
            bound = self._bound[outcome] = (
                self._requests.labels(**self._labels, outcome=outcome),
                self._latency.labels(**self._labels, outcome=outcome),
            )
        bound[0].inc()
        bound[1].observe(seconds)

    def track_queue_depth(self, read: Callable[[], float]) -> None:
        self._queue_depth.set_function(read)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""Prometheus metrics of one serving process, on a registry of its own.

Recording is plain list arithmetic, read by a custom collector at scrape time:
`prometheus_client`'s own Counter/Histogram take a lock and several calls per update,
which shows at tens of thousands of calls a second. Each series has one writer thread
(the event loop for requests, the inference thread for batches), so no lock is needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()


class FastHistogram:
    """Counts per upper bound (the last slot is +Inf), plus the sum."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative, out = 0, list[tuple[str, float]]()
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


class Gauge:
    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value


class LlmMetrics:
    """A generation engine's series (serving.llm): tokens and latencies are written by the
    engine thread only, the gauges read at scrape time."""

    def __init__(self) -> None:
        self.tokens_in = 0
        self.tokens_out = 0
        self.ttft = FastHistogram(TOKEN_BUCKETS)  # submit to first token
        self.itl = FastHistogram(TOKEN_BUCKETS)  # between a sequence's tokens
        self.finished: dict[str, int] = {}  # by finish reason (stop, length, cancelled)
        self._running: Callable[[], int] = lambda: 0
        self._waiting: Callable[[], int] = lambda: 0
        self._cache: Callable[[], tuple[int, int]] = lambda: (0, 0)

    def track(
        self,
        running: Callable[[], int],
        waiting: Callable[[], int],
        cache: Callable[[], tuple[int, int]],
    ) -> None:
        self._running, self._waiting, self._cache = running, waiting, cache

    def collect(self, names: list[str], values: list[str]) -> Iterator[Metric]:
        for name, doc, value in (
            ("modelplane_llm_prompt_tokens", "Prompt tokens prefilled", self.tokens_in),
            ("modelplane_llm_generation_tokens", "Tokens generated", self.tokens_out),
        ):
            counter = CounterMetricFamily(name, doc, labels=names)
            counter.add_metric(values, value)
            yield counter
        finished = CounterMetricFamily(
            "modelplane_llm_requests_finished",
            "Generations ended, by reason (stop, length, cancelled)",
            labels=[*names, "reason"],
        )
        for reason, count in list(self.finished.items()):
            finished.add_metric([*values, reason], count)
        yield finished
        for name, doc, histogram in (
            ("modelplane_llm_time_to_first_token_seconds", "Queue plus prefill", self.ttft),
            ("modelplane_llm_inter_token_seconds", "Between a sequence's tokens", self.itl),
        ):
            family = HistogramMetricFamily(name, doc, labels=names)
            family.add_metric(values, histogram.buckets(), histogram.sum)
            yield family
        used, capacity = self._cache()
        gauges: tuple[tuple[str, str, float], ...] = (
            ("modelplane_llm_requests_running", "Sequences in the decode batch", self._running()),
            ("modelplane_llm_requests_waiting", "Requests queued for prefill", self._waiting()),
            ("modelplane_llm_kv_cache_tokens", "KV cache slots held (padding too)", used),
            (
                "modelplane_llm_kv_cache_usage_ratio",
                "KV cache slots held over max running sequences x context length",
                used / capacity if capacity else 0.0,
            ),
        )
        for name, doc, reading in gauges:
            gauge = GaugeMetricFamily(name, doc, labels=names)
            gauge.add_metric(values, reading)
            yield gauge


class ServingMetrics(Collector):
    def __init__(self, model: str, version: str) -> None:
        self._labels = {"model": model, "version": version}
        self.latency: dict[str, FastHistogram] = {}  # by outcome
        self.batch_size = FastHistogram(BATCH_BUCKETS)
        self.load_seconds = Gauge()
        self._queue_depth: Callable[[], float] = lambda: 0.0
        self._serving: Callable[[], bool] = lambda: False
        self.llm: LlmMetrics | None = None  # set by a generation runtime
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, fds

    def observe(self, outcome: str, seconds: float) -> None:
        histogram = self.latency.get(outcome)
        if histogram is None:
            histogram = self.latency[outcome] = FastHistogram(LATENCY_BUCKETS)
        histogram.observe(seconds)

    def track_queue_depth(self, read: Callable[[], float]) -> None:
        self._queue_depth = read

    def track_serving(self, read: Callable[[], bool]) -> None:
        self._serving = read

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        names, values = list(self._labels), list(self._labels.values())
        requests = CounterMetricFamily(
            "modelplane_inference_requests",
            "Infer calls answered, by outcome (ok, bad_request, not_found, overloaded, error)",
            labels=[*names, "outcome"],
        )
        latency = HistogramMetricFamily(
            "modelplane_inference_request_seconds",
            "Infer call latency inside the server, by outcome",
            labels=[*names, "outcome"],
        )
        for outcome, histogram in list(self.latency.items()):
            requests.add_metric([*values, outcome], histogram.count)
            latency.add_metric([*values, outcome], histogram.buckets(), histogram.sum)
        batches = HistogramMetricFamily(
            "modelplane_inference_batch_size", "Calls stacked into one model run", labels=names
        )
        batches.add_metric(values, self.batch_size.buckets(), self.batch_size.sum)
        depth = GaugeMetricFamily(
            "modelplane_inference_queue_depth", "Infer calls queued or running", labels=names
        )
        depth.add_metric(values, self._queue_depth())
        load = GaugeMetricFamily(
            "modelplane_model_load_seconds",
            "Time to verify, load and warm up the model",
            labels=names,
        )
        load.add_metric(values, self.load_seconds.value)
        ready = GaugeMetricFamily(
            "modelplane_serving_ready",
            "1 while the model is loaded and calls are taken (0 loading or draining)",
            labels=names,
        )
        ready.add_metric(values, 1.0 if self._serving() else 0.0)
        yield from (requests, latency, batches, depth, load, ready)
        if self.llm is not None:
            yield from self.llm.collect(names, values)

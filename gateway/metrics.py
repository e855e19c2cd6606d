"""``/metrics`` of a gateway: read from its parts when scraped, nothing on the hot path.

Calls and errors per deployment and revision are the running totals `Counts` keeps at each
report (so they trail the calls by at most ``report_s``); shadow drops, the age of the last
route feed, the key cache's size and the routes held are read as they are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.counts import Counts
from gateway.follow import Follower
from gateway.keys import KeyCache
from gateway.routes import RouteTable


class GatewayCollector(Collector):
    def __init__(
        self,
        counts: Counts,
        follower: Follower,
        table: RouteTable,
        keys: KeyCache | None,
        dropped: Callable[[], int],
    ) -> None:
        self._counts = counts
        self._follower = follower
        self._table = table
        self._keys = keys
        self._dropped = dropped

    def collect(self) -> Iterator[Metric]:
        labels = ["deployment", "revision"]
        calls = CounterMetricFamily("modelplane_gateway_calls", "Calls answered", labels=labels)
        errors = CounterMetricFamily(
            "modelplane_gateway_errors", "Calls answered 5xx or not at all", labels=labels
        )
        shadow = CounterMetricFamily(
            "modelplane_gateway_shadow_calls", "Calls mirrored to a shadow", labels=labels
        )
        for (deployment, revision), tally in list(self._counts.totals.items()):
            values = [deployment, str(revision)]
            calls.add_metric(values, tally.calls)
            errors.add_metric(values, tally.errors)
            if tally.shadow_calls:
                shadow.add_metric(values, tally.shadow_calls)
        yield from (calls, errors, shadow)
        yield CounterMetricFamily(
            "modelplane_gateway_shadow_dropped",
            "Mirrored calls dropped: the shadow queue was full",
            value=self._dropped(),
        )
        fed_at = self._follower.fed_at
        yield GaugeMetricFamily(
            "modelplane_gateway_feed_age_seconds",
            "Seconds since the last route feed arrived (NaN: none yet)",
            value=time.monotonic() - fed_at if fed_at is not None else float("nan"),
        )
        yield GaugeMetricFamily(
            "modelplane_gateway_key_cache_size",
            "Verified API keys held (by token hash)",
            value=len(self._keys) if self._keys is not None else 0,
        )
        yield GaugeMetricFamily(
            "modelplane_gateway_routes", "Deployments in the route table", value=len(self._table)
        )


def make_registry(collector: GatewayCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry

"""Prometheus metrics of one gateway, in its own registry (several gateways may share a
process, as the tests do).

Requests by route, method and status; end-to-end and backend latency; time to first token;
tokens in and out by model; finish reasons; requests in flight; and the SDK's delivery
counters as gauges read at scrape time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)


class SdkStatsCollector(Collector):
    """Exposes every numeric field of ``stats()`` as ``undertow_gateway_sdk{stat=...}``."""

    def __init__(self, stats: Callable[[], Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "undertow_gateway_sdk",
            "SDK delivery counters (queued, sent, dropped, ...)",
            labels=["stat"],
        )
        try:
            values = _numbers(self._stats())
        except Exception:  # a failing stats() must not break the scrape
            values = {}
        for name, value in sorted(values.items()):
            family.add_metric([name], value)
        yield family


def _numbers(stats: Any) -> dict[str, float]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        stats = dataclasses.asdict(stats)
    elif not isinstance(stats, Mapping):
        stats = getattr(stats, "__dict__", {})
    return {
        str(k): float(v)
        for k, v in stats.items()
        if isinstance(v, int | float)  # bools too: link_up is 0 or 1
    }


class GatewayMetrics:
    """The gateway's instruments."""

    def __init__(self, sdk_stats: Callable[[], Any] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "undertow_gateway_requests", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "undertow_gateway_request_seconds",
            "request to last byte",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_seconds = Histogram(
            "undertow_gateway_backend_seconds",
            "time in the backend per generation",
            ["backend", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "undertow_gateway_time_to_first_token_seconds",
            "request to first streamed token",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "undertow_gateway_tokens", "tokens in and out", ["model", "direction"], registry=r
        )
        self.generations = Counter(
            "undertow_gateway_generations",
            "generations by finish reason",
            ["route", "finish_reason"],
            registry=r,
        )
        self.in_flight = Gauge("undertow_gateway_in_flight", "requests being served", registry=r)
        if sdk_stats is not None:
            r.register(SdkStatsCollector(sdk_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)

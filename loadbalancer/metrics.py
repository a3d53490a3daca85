"""Prometheus metrics, collected from the balancer's own counters at scrape time (the hot path
only bumps integers). Own registry: nothing global, nothing created at import."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from loadbalancer.backend import Health
from loadbalancer.cluster import Cluster
from loadbalancer.stats import Histogram, ProxyStats

__all__ = ["CONTENT_TYPE", "LBCollector", "make_registry", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "yoloserve_lb_"


class LBCollector(Collector):
    def __init__(self, cluster: Cluster, stats: ProxyStats) -> None:
        self.cluster = cluster
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self._proxy()
        yield from self._backends()

    def _proxy(self) -> Iterator[Metric]:
        stats = self.stats
        requests = CounterMetricFamily(PREFIX + "requests", "Answers sent to clients.", labels=["code"])
        for code, count in sorted(stats.responses.items()):
            requests.add_metric([str(code)], count)
        yield requests
        yield _histogram(
            PREFIX + "request_duration_seconds", "From arrival to the answer's end.", stats.duration
        )
        retries = CounterMetricFamily(
            PREFIX + "retries", "Retries, by the failure before.", labels=["reason"]
        )
        for reason, count in sorted(stats.retries.items()):
            retries.add_metric([reason], count)
        yield retries
        yield CounterMetricFamily(
            PREFIX + "retry_budget_exhausted",
            "Retries refused by the retry budget.",
            value=stats.budget_exhausted,
        )
        yield GaugeMetricFamily(PREFIX + "inflight_requests", "Requests being proxied.", value=stats.active)
        yield GaugeMetricFamily(
            PREFIX + "client_connections",
            "Open client connections.",
            value=stats.client_connections,
        )
        yield GaugeMetricFamily(
            PREFIX + "panic",
            "1 while in panic mode (routing to all).",
            value=float(self.cluster.panic),
        )

    def _backends(self) -> Iterator[Metric]:
        now = time.monotonic()
        lab = ["backend"]
        sent = CounterMetricFamily(PREFIX + "upstream_requests", "Attempts sent.", labels=lab)
        errors = CounterMetricFamily(
            PREFIX + "upstream_errors", "Failed attempts, by kind.", labels=["backend", "kind"]
        )
        ejections = CounterMetricFamily(PREFIX + "ejections", "Outlier ejections.", labels=lab)
        inflight = GaugeMetricFamily(PREFIX + "upstream_inflight", "In flight.", labels=lab)
        weight = GaugeMetricFamily(
            PREFIX + "backend_effective_weight", "Weight after slow start and overload.", labels=lab
        )
        ejected = GaugeMetricFamily(PREFIX + "backend_ejected", "1 while ejected.", labels=lab)
        health = GaugeMetricFamily(
            PREFIX + "backend_health",
            "1 for the current health state.",
            labels=["backend", "state"],
        )
        latency = HistogramMetricFamily(
            PREFIX + "upstream_latency_seconds", "Time to the answer head.", labels=lab
        )
        for backend in list(self.cluster.backends.values()):
            bid = [backend.id]
            sent.add_metric(bid, backend.requests)
            for kind, count in sorted(backend.errors.items()):
                errors.add_metric([backend.id, kind], count)
            ejections.add_metric(bid, backend.ejections_total)
            inflight.add_metric(bid, backend.inflight)
            weight.add_metric(bid, backend.effective_weight(now))
            ejected.add_metric(bid, float(backend.ejected(now)))
            for state in Health:
                health.add_metric([backend.id, state.value], float(backend.health is state))
            _add_histogram(latency, bid, backend.latency)
        yield from (sent, errors, ejections, inflight, weight, ejected, health, latency)


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[])
    _add_histogram(family, [], histogram)
    return family


def _add_histogram(family: HistogramMetricFamily, values: list[str], h: Histogram) -> None:
    family.add_metric(values, buckets=[(le, float(c)) for le, c in h.cumulative()], sum_value=h.sum)


def make_registry(cluster: Cluster, stats: ProxyStats) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LBCollector(cluster, stats))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

"""Prometheus metrics, collected from the balancer's own counters at scrape time (the hot path
only bumps integers). Own registry: nothing global, nothing created at import."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

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
from loadbalancer.discovery import Discovery
from loadbalancer.speed import speed_factor
from loadbalancer.stats import Histogram, ProxyStats
from loadbalancer.tls import Reloading

__all__ = ["CONTENT_TYPE", "LBCollector", "TlsCollector", "make_registry", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "yoloserve_lb_"


class LBCollector(Collector):
    def __init__(self, cluster: Cluster, stats: ProxyStats, discovery: Discovery | None = None) -> None:
        self.cluster = cluster
        self.stats = stats
        self.discovery = discovery

    def collect(self) -> Iterator[Metric]:
        yield from self._proxy()
        yield from self._backends()
        if self.discovery is not None:
            yield from self._discovery(self.discovery)

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
        yield from _websockets(stats)
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
        speed = GaugeMetricFamily(
            PREFIX + "backend_speed_factor",
            "What the load-aware policies multiply the weight by for being slower than the fastest "
            "backend (1: not slower).",
            labels=lab,
        )
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
            factor = speed_factor(self.cluster.policy, backend)
            speed.add_metric(bid, 1.0 if factor is None else factor)
            for state in Health:
                health.add_metric([backend.id, state.value], float(backend.health is state))
            _add_histogram(latency, bid, backend.latency)
        yield from (sent, errors, ejections, inflight, weight, ejected, speed, health, latency)


    def _discovery(self, discovery: Discovery) -> Iterator[Metric]:
        lab = ["name"]
        resolutions = CounterMetricFamily(
            PREFIX + "dns_resolutions", "DNS resolutions of a discovered name.", labels=lab
        )
        failures = CounterMetricFamily(
            PREFIX + "dns_resolution_failures",
            "Failed DNS resolutions (the last good set was kept), by reason.",
            labels=["name", "reason"],
        )
        found = GaugeMetricFamily(
            PREFIX + "dns_discovered_backends", "Addresses in the name's last good answer.", labels=lab
        )
        failing = GaugeMetricFamily(
            PREFIX + "dns_failing", "1 while the name's last resolution failed.", labels=lab
        )
        for name in discovery.names:
            url = [name.spec.url]
            resolutions.add_metric(url, name.resolutions)
            for reason, count in name.failures.items():
                failures.add_metric([name.spec.url, reason], count)
            found.add_metric(url, len(name.addresses))
            failing.add_metric(url, float(name.failing > 0))
        yield from (resolutions, failures, found, failing)


def _websockets(stats: ProxyStats) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        PREFIX + "websockets_active", "WebSockets handshaking or open.", value=stats.websockets_active
    )
    outcomes = CounterMetricFamily(
        PREFIX + "websockets",
        "WebSocket upgrades: opened, rejected (a non-101 answer), failed (no backend took it), "
        "refused (over max_websockets), idle_timeout.",
        labels=["outcome"],
    )
    for outcome, count in sorted(stats.websockets.items()):
        outcomes.add_metric([outcome], count)
    yield outcomes
    piped = CounterMetricFamily(
        PREFIX + "websocket_bytes", "Bytes piped through open WebSockets.", labels=["direction"]
    )
    piped.add_metric(["to_backend"], stats.websocket_bytes_in)
    piped.add_metric(["to_client"], stats.websocket_bytes_out)
    yield piped


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[])
    _add_histogram(family, [], histogram)
    return family


def _add_histogram(family: HistogramMetricFamily, values: list[str], h: Histogram) -> None:
    family.add_metric(values, buckets=[(le, float(c)) for le, c in h.cumulative()], sum_value=h.sum)


class TlsCollector(Collector):
    """The TLS contexts, by name (``proxy``, ``admin``, ``grpc``, ``upstream``...): how often
    each was rebuilt from changed files, and the client handshakes each listening one refused."""

    def __init__(self, contexts: Mapping[str, Reloading]) -> None:
        self.contexts = contexts

    def collect(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            PREFIX + "tls_reloads", "TLS contexts rebuilt after their files changed.", labels=["context"]
        )
        refused = CounterMetricFamily(
            PREFIX + "tls_handshakes_refused",
            "Client TLS handshakes refused, by OpenSSL's reason.",
            labels=["context", "reason"],
        )
        for name, context in sorted(self.contexts.items()):
            reloads.add_metric([name], context.reloads)
            for reason, count in sorted(context.refusals.counts.items()):
                refused.add_metric([name, reason], count)
        yield reloads
        yield refused


def make_registry(
    cluster: Cluster, stats: ProxyStats, discovery: Discovery | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LBCollector(cluster, stats, discovery))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

"""The gRPC side's metrics: the HTTP side's families (calls by gRPC status, retries, backends,
health, latency) for the gRPC cluster and totals, named ``yoloserve_lb_grpc_*``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from loadbalancer.cluster import Cluster
from loadbalancer.discovery import Discovery
from loadbalancer.metrics import PREFIX, LBCollector
from loadbalancer.stats import ProxyStats

__all__ = ["GrpcCollector"]

GRPC_PREFIX = PREFIX + "grpc_"


class GrpcCollector(Collector):
    def __init__(self, cluster: Cluster, stats: ProxyStats, discovery: Discovery | None) -> None:
        self._inner = LBCollector(cluster, stats, discovery)

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():
            if "websocket" in metric.name:
                continue
            metric.name = metric.name.replace(PREFIX, GRPC_PREFIX, 1)
            metric.samples = [s._replace(name=s.name.replace(PREFIX, GRPC_PREFIX, 1))
                              for s in metric.samples]
            if metric.name == GRPC_PREFIX + "requests":
                metric.documentation = "Calls answered to clients, by gRPC status (code)."
            yield metric

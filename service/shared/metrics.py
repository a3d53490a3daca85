"""Metrics of the result cache's levels, coalescing and the shared store (Redis).

Registered on the service's registry; under gunicorn every worker writes its own files and one
scrape of ``/metrics`` sums them (``PROMETHEUS_MULTIPROC_DIR``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["SharedMetrics"]

_REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class SharedMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.lookups = Counter(
            "result_cache_lookups", "Result cache lookups by level (local: this process, shared: "
            "Redis) and outcome", ["level", "result"], registry=r)
        self.coalesced = Counter(
            "coalesced_waits", "Requests that waited for another's computation of the same key "
            "(local: in this process, shared: in another process)", ["level"], registry=r)
        self.lock_timeouts = Counter(
            "coalesce_lock_timeouts", "Waits for another process's result that ended without it "
            "(lease expired: computed here; deadline: answered 504)", ["reason"], registry=r)
        self.redis_errors = Counter(
            "shared_store_errors", "Redis calls that failed, by operation and kind", ["op", "kind"],
            registry=r)
        self.redis_latency = Histogram(
            "shared_store_latency_seconds", "Redis round trip, by operation", ["op"],
            buckets=_REDIS_BUCKETS, registry=r)
        self.incidents = Counter(
            "shared_store_incidents", "Times the shared store became unavailable (the circuit "
            "opened)", registry=r)
        self.connected = Gauge(
            "shared_store_connected", "Processes using the shared store now (circuit closed)",
            registry=r, multiprocess_mode="livesum")
        self.limiter = Counter(
            "rate_limit_decisions", "Rate limit decisions by where the bucket lives (shared: "
            "Redis, local: this process) and outcome", ["where", "result"], registry=r)

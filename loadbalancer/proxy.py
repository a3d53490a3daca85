"""State shared by every client connection: the cluster, the retry budget, limits, totals, and
one ticker that times every exchange and tunnel (instead of a timer per request).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from loadbalancer.budget import RetryBudget
from loadbalancer.cluster import Cluster
from loadbalancer.hashing import request_key
from loadbalancer.latency import HeadLatency
from loadbalancer.stats import ProxyStats
from loadbalancer.ticker import Ticker

if TYPE_CHECKING:
    from loadbalancer.messages import Request
    from loadbalancer.settings import LBSettings

__all__ = ["Proxy"]


class Proxy:
    """Shared by every client connection: the cluster, the retry budget, limits, totals and the
    ticker."""

    def __init__(self, settings: LBSettings, cluster: Cluster, stats: ProxyStats) -> None:
        self.settings = settings
        self.cluster = cluster
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        self.budget = RetryBudget(
            settings.retry_budget_percent, settings.retry_budget_min, settings.retry_budget_wait
        )
        self.per_try_max = settings.per_try_timeout
        self.per_try_min = min(settings.per_try_timeout_min, settings.per_try_timeout)
        self.per_try_factor = settings.per_try_factor
        self.head_latency = HeadLatency()
        self._p99: float | None = None
        self._per_try = self.per_try_max
        self.default_timeout = settings.request_timeout
        self.max_timeout = settings.max_request_timeout
        self.max_inflight = settings.max_inflight
        self.max_retries = settings.max_retries
        self.idle: asyncio.Event | None = None
        self.ticker = Ticker(self.loop)

    def deadline_of(self, request: Request) -> float:
        """When ``request`` must be answered: the time its caller gave (``X-Request-Timeout-Ms``)
        up to ``max_request_timeout``, else ``request_timeout``, from its arrival."""
        timeout = self.default_timeout
        if request.timeout_ms is not None:
            timeout = min(request.timeout_ms / 1000.0, self.max_timeout)
        return request.started + timeout

    def hash_key(self, request: Request) -> bytes | None:
        """The key a consistent-hash policy places ``request`` by; None under policies that
        take no key (not worth parsing for them)."""
        if not self.cluster.policy.uses_key:
            return None
        return request_key(request.target, request.headers, self.settings.hash_header.encode())

    @property
    def per_try(self) -> float:
        """Seconds one try may wait for its answer head: ``per_try_factor`` x the recent p99
        across backends, within [per_try_timeout_min, per_try_timeout]."""
        p99 = self.head_latency.value
        if p99 is self._p99:  # recomputed only when the quantile moves (every hundred answers)
            return self._per_try
        self._p99 = p99
        if p99 is None or self.per_try_factor == 0:
            self._per_try = self.per_try_max
        else:
            self._per_try = min(self.per_try_max, max(self.per_try_min, self.per_try_factor * p99))
        return self._per_try

    def close(self) -> None:
        """Stops the ticker (every exchange has ended or been cut by then)."""
        self.ticker.close()

    async def wait_idle(self, within: float) -> bool:
        """Waits until no request is in flight (graceful shutdown); False on timeout."""
        if self.stats.active == 0:
            return True
        self.idle = asyncio.Event()
        try:
            async with asyncio.timeout(within):
                await self.idle.wait()
        except TimeoutError:
            return False
        return True

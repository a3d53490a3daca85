"""State shared by every client connection: the cluster, the retry budget, limits, totals, and
one ticker that times every exchange (instead of a timer per request).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING

from loadbalancer.budget import RetryBudget
from loadbalancer.cluster import Cluster
from loadbalancer.hashing import request_key
from loadbalancer.latency import HeadLatency
from loadbalancer.policies import ConsistentHash
from loadbalancer.stats import ProxyStats

if TYPE_CHECKING:
    from loadbalancer.exchange import Exchange
    from loadbalancer.messages import Request
    from loadbalancer.settings import LBSettings

__all__ = ["TICK", "Proxy"]

TICK = 0.02  # resolution of per-try timeouts and deadlines


class Proxy:
    """Shared by every client connection: the cluster, the retry budget, limits and totals."""

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
        self.default_timeout = settings.request_timeout
        self.max_timeout = settings.max_request_timeout
        self.max_inflight = settings.max_inflight
        self.max_retries = settings.max_retries
        self.idle: asyncio.Event | None = None
        self._timed: set[Exchange] = set()  # bounded by max_inflight
        self._ticker: asyncio.TimerHandle | None = None

    def deadline_of(self, request: Request) -> float:
        """When ``request`` must be answered: the time its caller gave (``X-Request-Timeout-Ms``)
        up to ``max_request_timeout``, else ``request_timeout``, from its arrival."""
        timeout = self.default_timeout
        if request.timeout_ms is not None:
            timeout = min(request.timeout_ms / 1000.0, self.max_timeout)
        return request.started + timeout

    def hash_key(self, request: Request) -> bytes | None:
        """The key a consistent-hash policy places ``request`` by; None under other policies."""
        if not isinstance(self.cluster.policy, ConsistentHash):
            return None
        return request_key(request.target, request.headers, self.settings.hash_header.encode())

    @property
    def per_try(self) -> float:
        """Seconds one try may wait for its answer head: ``per_try_factor`` x the recent p99
        across backends, within [per_try_timeout_min, per_try_timeout]."""
        p99 = self.head_latency.value
        if p99 is None or self.per_try_factor == 0:
            return self.per_try_max
        return min(self.per_try_max, max(self.per_try_min, self.per_try_factor * p99))

    def watch(self, exchange: Exchange) -> None:
        """Starts checking ``exchange.timer_at``: one ticker for every exchange, instead of a
        timer per request."""
        self._timed.add(exchange)
        if self._ticker is None:
            self._ticker = self.loop.call_later(TICK, self._tick)

    def unwatch(self, exchange: Exchange) -> None:
        self._timed.discard(exchange)

    def _tick(self) -> None:
        now = monotonic()
        for exchange in [e for e in self._timed if e.timer_at <= now]:
            if exchange.timer_at <= now:  # still due: an earlier one may have ended it
                exchange.on_timer()
        self._ticker = self.loop.call_later(TICK, self._tick) if self._timed else None

    def close(self) -> None:
        """Stops the ticker (every exchange has ended or been cut by then)."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self._timed.clear()

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

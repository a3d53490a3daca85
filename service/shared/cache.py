"""The result cache in two levels: this process's LRU in front, Redis behind it.

    get_or_compute(key) ─▶ local LRU ──hit──▶ (value, cached)
                               │miss
                               ▼
                          local coalescer: one task per key in this process; the others wait on it
                               │
                               ▼
                          shared level (when configured): Redis hit, or the fleet-wide lease
                          (``SharedResults``), or compute here when Redis is unavailable
                               │
                               ▼
                          the value goes into the local LRU

Without Redis this is today's behaviour: the LRU and in-process coalescing.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from service.coalesce import Coalescer
from service.result_cache import ResultCache
from service.shared.lease import SharedResults
from service.shared.metrics import SharedMetrics

__all__ = ["TwoLevelCache"]

V = TypeVar("V")


class TwoLevelCache(Generic[V]):
    def __init__(self, local: ResultCache[V], shared: SharedResults[V] | None,
                 metrics: SharedMetrics) -> None:
        self._local = local
        self._shared = shared
        self._metrics = metrics
        self._coalesce: Coalescer[tuple[V, bool]] = Coalescer(lambda k, v: local.put(k, v[0]))

    async def get_or_compute(self, key: bytes, compute: Callable[[], Coroutine[Any, Any, V]],
                             deadline: float | None) -> tuple[V, bool]:
        """The value, and whether it was cached (either level) or computed for another request."""
        hit = self._local.get(key)
        if hit is not None:
            self._metrics.lookups.labels("local", "hit").inc()
            return hit, True
        self._metrics.lookups.labels("local", "miss").inc()
        joined = key in self._coalesce
        if joined:
            self._metrics.coalesced.labels("local").inc()
        value, shared = await self._coalesce.run(key, lambda: self._fetch(key, compute, deadline))
        return value, joined or shared

    async def _fetch(self, key: bytes, compute: Callable[[], Coroutine[Any, Any, V]],
                     deadline: float | None) -> tuple[V, bool]:
        if self._shared is None:
            return await compute(), False
        return await self._shared.fetch_or_compute(key, compute, deadline)

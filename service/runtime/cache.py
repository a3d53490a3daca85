"""The result cache, in one place: this process's LRU in front, in-process coalescing, and the
fleet's Redis level behind it when there is one (``service.shared.results``).

    get_or_compute(key) ─▶ local LRU ──hit──▶ (value, cached)
                               │miss
                               ▼
                          coalescer: one task per key in this process; the others wait on it
                               │
                               ▼
                          shared level (when configured): Redis hit, or the fleet-wide lease
                          (``SharedResults``), or compute here when Redis is unavailable
                               │
                               ▼
                          the value goes into the local LRU

Identical image bytes with identical parameters (and model version) share one key.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from cachetools import TLRUCache

from service.shared.metrics import SharedMetrics
from service.shared.results import SharedResults

__all__ = ["Coalescer", "ResultCache", "TwoLevelCache", "cache_key"]

V = TypeVar("V")


def cache_key(data: bytes, params: object) -> bytes:
    """Identical image bytes with identical parameters share one key."""
    h = hashlib.blake2b(data, digest_size=20)
    h.update(repr(params).encode())
    return h.digest()


class ResultCache(Generic[V]):
    """An LRU with a TTL."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._entries: TLRUCache[bytes, V] = TLRUCache(
            maxsize=size, ttu=lambda _k, _v, now: now + ttl_s, timer=time.monotonic)

    def get(self, key: bytes) -> V | None:
        return self._entries.get(key)

    def put(self, key: bytes, value: V) -> None:
        self._entries[key] = value


class Coalescer(Generic[V]):
    """Runs ``compute()`` once per key at a time; cancels it only when every waiter has gone.

    ``on_done(key, value)`` is called with each computation that succeeds (to cache it)."""

    def __init__(self, on_done: Callable[[bytes, V], None] | None = None) -> None:
        self._inflight: dict[bytes, tuple[asyncio.Task[V], list[int]]] = {}
        self._on_done = on_done

    def __contains__(self, key: bytes) -> bool:
        return key in self._inflight

    async def run(self, key: bytes, compute: Callable[[], Coroutine[Any, Any, V]]) -> V:
        if key not in self._inflight:
            task = asyncio.create_task(compute())
            self._inflight[key] = (task, [0])
            task.add_done_callback(lambda t: self._finish(key, t))
        task, waiters = self._inflight[key]
        waiters[0] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            waiters[0] -= 1
            if waiters[0] == 0 and not task.done():
                task.cancel()
            raise

    def _finish(self, key: bytes, task: asyncio.Task[V]) -> None:
        self._inflight.pop(key, None)
        if self._on_done is not None and not task.cancelled() and task.exception() is None:
            self._on_done(key, task.result())


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

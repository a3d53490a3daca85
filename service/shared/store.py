"""The connection to Redis behind a circuit: a failing Redis costs a request no latency.

    call(op, fn) ──▶ circuit closed? ──no──▶ raise StoreUnavailable at once
                          │yes
                          ▼
                 fn(redis) within the call timeout ──error──▶ open the circuit (log once,
                          │                                    count the incident), start the
                          ▼                                    probe, raise StoreUnavailable
                       result
    probe: PING with a growing pause (0.05 s … 1 s) until Redis answers, then close the circuit.

Callers catch ``StoreUnavailable`` and carry on without shared state.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.shared.metrics import SharedMetrics

__all__ = ["SharedStore", "StoreUnavailable"]

log = logging.getLogger("yoloserve.shared")

T = TypeVar("T")

_PROBE_FIRST_S = 0.05
_PROBE_MAX_S = 1.0


class StoreUnavailable(Exception):
    """Redis did not answer (down, slow, refused): serve without shared state."""


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | redis_errors.TimeoutError):
        return "timeout"
    if isinstance(exc, redis_errors.ConnectionError | OSError):
        return "connection"
    return "error"


class SharedStore:
    """One process's Redis client, its pool, and the circuit in front of them."""

    def __init__(self, client: Redis, prefix: str, timeout_s: float, metrics: SharedMetrics) -> None:
        self.client = client
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.metrics = metrics
        self._open = False
        self._probe: asyncio.Task[None] | None = None
        metrics.connected.set(1)

    @classmethod
    def from_url(cls, url: str, *, prefix: str, pool_size: int, connect_timeout_s: float,
                 timeout_s: float, metrics: SharedMetrics) -> SharedStore:
        """No connection is made here: the pool connects on first use, in the running loop."""
        pool = BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),  # the circuit decides, not a retry loop per call
        )
        return cls(Redis(connection_pool=pool), prefix, timeout_s, metrics)

    @property
    def available(self) -> bool:
        return not self._open

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    async def call(self, op: str, fn: Callable[[Redis], Awaitable[T]]) -> T:
        """``fn(client)`` within the timeout; ``StoreUnavailable`` when the circuit is open or
        the call fails (which opens it)."""
        if self._open:
            raise StoreUnavailable("the shared store is unavailable")
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await fn(self.client)
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            self.metrics.redis_errors.labels(op, _kind(exc)).inc()
            self._trip(op, exc)
            raise StoreUnavailable(f"{op}: {exc!r}") from exc
        self.metrics.redis_latency.labels(op).observe(time.perf_counter() - start)
        return result

    def _trip(self, op: str, exc: BaseException) -> None:
        if self._open:
            return
        self._open = True
        self.metrics.incidents.inc()
        self.metrics.connected.set(0)
        log.warning("shared store unavailable; serving from this process alone until it answers",
                    extra={"op": op, "error": repr(exc)})
        # a context of its own: its log lines are not the request's that tripped the circuit
        self._probe = asyncio.get_running_loop().create_task(
            self._reconnect(), name="redis-probe", context=contextvars.Context())
        self._probe.add_done_callback(_log_failure)

    async def _reconnect(self) -> None:
        pause = _PROBE_FIRST_S
        started = time.monotonic()
        while True:
            await asyncio.sleep(pause)  # the probe's back-off, not a synchronisation
            try:
                # connections from before the incident may be dead (a restarted Redis): drop them
                # all, so that the first calls after the circuit closes use fresh ones
                await self.client.connection_pool.disconnect()
                async with asyncio.timeout(self.timeout_s):
                    await self.client.ping()
            except (redis_errors.RedisError, OSError, TimeoutError):
                pause = min(pause * 2, _PROBE_MAX_S)
                continue
            self._open = False
            self.metrics.connected.set(1)
            log.warning("shared store available again; sharing resumed",
                        extra={"down_s": round(time.monotonic() - started, 3)})
            return

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        self.metrics.connected.set(0)
        with contextlib.suppress(redis_errors.RedisError, OSError):
            await self.client.aclose()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the shared store's probe failed", exc_info=task.exception())

"""Coalescing across processes: one computation per key in the fleet, under a Redis lease.

    lookup (one round trip, a script): the result ──▶ hit
                                       no result, lock free ──▶ take it (SET NX PX lease) ──▶ compute,
                                           renewing the lease while computing; then store the result
                                           and release the lock (one round trip, a script)
                                       no result, lock held ──▶ poll again (5 ms growing to 50 ms),
                                           until the result, the lock (its holder died: the lease ran
                                           out, or it failed: released) or the request's deadline

A holder that dies delays the others by the lease at most. Redis failing at any step: the request
computes on its own (``StoreUnavailable`` is never passed on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis

from service.errors import DeadlineExceeded
from service.shared.codec import CodecError
from service.shared.store import SharedStore, StoreUnavailable

__all__ = ["SharedResults"]

log = logging.getLogger("yoloserve.shared")

V = TypeVar("V")

_HIT, _ACQUIRED, _HELD = 1, 2, 0
_POLL_FIRST_S, _POLL_MAX_S = 0.005, 0.05

# KEYS: result, lock; ARGV: token, lease ms -> {1, value} | {2} (lock taken) | {0} (held)
_LOOKUP = """
local v = redis.call('GET', KEYS[1])
if v then return {1, v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
# KEYS: result, lock; ARGV: value, ttl ms, token
_STORE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
# KEYS: lock; ARGV: token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: lock; ARGV: token, lease ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

Compute = Callable[[], Coroutine[Any, Any, V]]


class SharedResults(Generic[V]):
    """The Redis level of the result cache, with coalescing across processes."""

    def __init__(self, store: SharedStore, *, ttl_s: float, lease_s: float,
                 encode: Callable[[V], bytes], decode: Callable[[bytes], V]) -> None:
        self.store = store
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.lease_ms = max(1, round(lease_s * 1000))
        self.encode, self.decode = encode, decode
        self.metrics = store.metrics
        client = store.client
        self._lookup, self._store = client.register_script(_LOOKUP), client.register_script(_STORE)
        self._release, self._renew = client.register_script(_RELEASE), client.register_script(_RENEW)
        self._background: set[asyncio.Task[Any]] = set()

    async def fetch_or_compute(self, key: bytes, compute: Compute[V],
                               deadline: float | None) -> tuple[V, bool]:
        """The value and whether it came from the shared level (computed elsewhere)."""
        name = key.hex()
        rkey, lkey = self.store.key("r", name), self.store.key("l", name)
        token = f"{os.getpid()}:{secrets.token_hex(6)}"  # the holder's pid, for people reading Redis
        waited, pause = False, _POLL_FIRST_S
        while True:
            try:
                found = await self.store.call("lookup", lambda r: self._lookup(
                    keys=[rkey, lkey], args=[token, self.lease_ms], client=r))
            except StoreUnavailable:
                return await compute(), False
            if found[0] == _HIT:
                try:
                    value = self.decode(bytes(found[1]))
                except CodecError:
                    log.warning("unreadable shared cache entry; computing it", extra={"key": rkey})
                    return await compute(), False
                self.metrics.lookups.labels("shared", "hit").inc()
                if waited:
                    self.metrics.coalesced.labels("shared").inc()
                return value, True
            if not waited:
                self.metrics.lookups.labels("shared", "miss").inc()
            if found[0] == _ACQUIRED:
                if waited:  # the holder died (lease ran out) or failed (released)
                    self.metrics.lock_timeouts.labels("taken_over").inc()
                return await self._compute_holding(rkey, lkey, token, compute), False
            waited = True
            if deadline is not None and time.monotonic() + pause >= deadline:
                self.metrics.lock_timeouts.labels("deadline").inc()
                raise DeadlineExceeded("the request's deadline passed while another process "
                                       "computed the same image")
            await asyncio.sleep(pause)  # polling another process, bounded as above
            pause = min(pause * 1.5, _POLL_MAX_S)

    async def _compute_holding(self, rkey: str, lkey: str, token: str, compute: Compute[V]) -> V:
        renewing = asyncio.create_task(self._keep_lease(lkey, token), name="redis-lease")
        try:
            value = await compute()
        except BaseException:
            # failed or cancelled: let a waiter take over now rather than after the lease
            self._spawn(self._call_quietly("release", lambda r: self._release(
                keys=[lkey], args=[token], client=r)))
            raise
        finally:
            renewing.cancel()
        await self._call_quietly("store", lambda r: self._store(
            keys=[rkey, lkey], args=[self.encode(value), self.ttl_ms, token], client=r))
        return value

    async def _keep_lease(self, lkey: str, token: str) -> None:
        """Renew the lease every third of it while computing, until the lock is lost."""
        while True:
            await asyncio.sleep(self.lease_ms / 3000)  # the renewal period
            try:
                kept = await self.store.call("renew", lambda r: self._renew(
                    keys=[lkey], args=[token, self.lease_ms], client=r))
            except StoreUnavailable:
                return
            if not kept:
                return

    async def _call_quietly(self, op: str, fn: Callable[[Redis], Any]) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.store.call(op, fn)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

"""The per-client token bucket of the whole fleet, in Redis, updated atomically by a script.

The bucket's clock is Redis's own (``TIME``), so that hosts whose clocks differ share one bucket.
While Redis is unavailable each process limits with its own buckets (``RateLimiter``).
"""

from __future__ import annotations

import hashlib

from service.ratelimit import RateLimiter
from service.shared.store import SharedStore, StoreUnavailable

__all__ = ["SharedRateLimiter"]

# KEYS: bucket; ARGV: rate per second, burst -> seconds until a request may pass (0: it passes)
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""


class SharedRateLimiter:
    """``acquire(client)``: 0 when a request may pass, else the seconds until one may."""

    def __init__(self, store: SharedStore, local: RateLimiter) -> None:
        self.store = store
        self.local = local
        self.metrics = store.metrics
        self._take = store.client.register_script(_TAKE)
        self._args = [repr(local.rate), repr(local.burst)]

    async def acquire(self, client: str) -> float:
        if self.store.available:
            # hashed: the client may be named by its API key, which has no place in Redis
            name = hashlib.blake2b(client.encode(), digest_size=16).hexdigest()
            key = self.store.key("rl", name)
            try:
                raw = await self.store.call("ratelimit", lambda r: self._take(
                    keys=[key], args=self._args, client=r))
            except StoreUnavailable:
                pass
            else:
                wait = float(raw)
                self.metrics.limiter.labels("shared", "limited" if wait > 0 else "allowed").inc()
                return wait
        wait = self.local.allow(client)
        self.metrics.limiter.labels("local", "limited" if wait > 0 else "allowed").inc()
        return wait

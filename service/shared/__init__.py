"""State shared by every process of a fleet, in Redis: the result cache's second level, coalescing
across processes (``results``; the cache itself is ``service.runtime.cache``), and the fleet-wide
rate limit. Without a Redis URL none of it exists and each
process keeps its own (today's behaviour); with one, Redis failing never fails a request.
"""

from __future__ import annotations

from service.ratelimit import RateLimiter
from service.settings import Settings
from service.shared.codec import CodecError, decode, encode
from service.shared.limiter import SharedRateLimiter
from service.shared.metrics import SharedMetrics
from service.shared.results import SharedResults
from service.shared.store import SharedStore, StoreUnavailable

__all__ = [
    "CodecError",
    "SharedMetrics",
    "SharedRateLimiter",
    "SharedResults",
    "SharedStore",
    "StoreUnavailable",
    "decode",
    "encode",
    "open_store",
    "rate_limiter",
]


def open_store(settings: Settings, metrics: SharedMetrics) -> SharedStore | None:
    """The Redis client the settings name (it connects on first use), or None without one."""
    if settings.redis_url is None:
        return None
    return SharedStore.from_url(
        settings.redis_url.get_secret_value(), prefix=settings.redis_key_prefix,
        pool_size=settings.redis_pool_size,
        connect_timeout_s=settings.redis_connect_timeout_ms / 1000,
        timeout_s=settings.redis_timeout_ms / 1000, metrics=metrics)


def rate_limiter(settings: Settings, store: SharedStore | None) -> RateLimiter | SharedRateLimiter | None:
    """The per-client limit the settings ask for: in Redis when there is one, else per process."""
    if not settings.rate_limit_rps:
        return None
    local = RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
    return local if store is None else SharedRateLimiter(store, local)

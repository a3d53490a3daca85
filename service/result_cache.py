"""The result cache: computed detections by image bytes and parameters, an LRU with a TTL."""

from __future__ import annotations

import hashlib
import time
from typing import Generic, TypeVar

from cachetools import TLRUCache

__all__ = ["ResultCache", "cache_key"]

V = TypeVar("V")


def cache_key(data: bytes, params: object) -> bytes:
    """Identical image bytes with identical parameters share one key."""
    h = hashlib.blake2b(data, digest_size=20)
    h.update(repr(params).encode())
    return h.digest()


class ResultCache(Generic[V]):
    def __init__(self, size: int, ttl_s: float) -> None:
        self._entries: TLRUCache[bytes, V] = TLRUCache(
            maxsize=size, ttu=lambda _k, _v, now: now + ttl_s, timer=time.monotonic)

    def get(self, key: bytes) -> V | None:
        return self._entries.get(key)

    def put(self, key: bytes, value: V) -> None:
        self._entries[key] = value

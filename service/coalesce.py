"""Coalescing: one computation per key while it is in flight; later callers wait on the first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["Coalescer"]

V = TypeVar("V")


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

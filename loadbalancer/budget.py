"""Envoy's retry budget: concurrent retries at most a share of active requests, with a floor.

A request holds one slot from its first retry until it ends. When no slot is free, a retry may
wait (bounded by ``max_wait``, its deadline and the number of active requests) for one to free
up, first come first served. Retries never exceed the budget, so they cannot amplify load into a
storm, while a burst of retries after one backend dies is queued for a moment rather than failed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from time import monotonic

__all__ = ["RetryBudget"]


class RetryBudget:
    def __init__(self, percent: float, min_concurrency: int, max_wait: float) -> None:
        self.percent = percent / 100.0
        self.min_concurrency = min_concurrency
        self.max_wait = max_wait
        self.active_requests = 0
        self.active_retries = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()

    @property
    def limit(self) -> int:
        return max(self.min_concurrency, int(self.active_requests * self.percent))

    def enter(self) -> None:
        """A request starts (retry or not): the budget grows with it."""
        self.active_requests += 1
        if self._waiters:
            self._wake()

    def leave(self) -> None:
        self.active_requests -= 1

    def try_acquire(self) -> bool:
        if self.active_retries < self.limit and not self._waiters:
            self.active_retries += 1
            return True
        return False

    async def acquire(self, deadline: float) -> bool:
        """Takes a retry slot, waiting until ``min(deadline, now + max_wait)`` at most."""
        if self.try_acquire():
            return True
        loop = asyncio.get_running_loop()
        until = min(deadline, monotonic() + self.max_wait)
        if until <= monotonic() or len(self._waiters) >= self.active_requests:
            return False
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        handle = loop.call_at(until, _expire, waiter)
        try:
            return await waiter  # True: granted, the slot already counted for us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()
            raise
        finally:
            handle.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        self.active_retries -= 1
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        while self._waiters and self.active_retries < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active_retries += 1
                waiter.set_result(True)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)

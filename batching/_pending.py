"""Queued items, the bounded FIFO that holds them, and the set-if-not-done helpers.

An item is *dead* once nobody waits for it any more: its caller was cancelled, or its deadline
timer already failed it. Dead items are skipped and counted out of the depth; they are removed
lazily (from the head, or by :meth:`PendingQueue.compact` when the deque reaches its bound), so
every operation on the hot path is O(1).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ._types import Completed

__all__ = ["Pending", "PendingQueue", "Taken", "fail_all", "settle_exception", "settle_result"]

T = TypeVar("T")
R = TypeVar("R")

_NO_KEY: Hashable = object()
"""No batch key chosen yet (``None`` is a key like any other)."""


def settle_result(future: asyncio.Future[Any], value: object) -> bool:
    """Set ``value`` on ``future`` unless it is done already; tell whether it was set."""
    if future.done():
        return False
    future.set_result(value)
    return True


def settle_exception(future: asyncio.Future[Any], exc: BaseException) -> bool:
    """Set ``exc`` on ``future`` unless it is done already; tell whether it was set."""
    if future.done():
        return False
    future.set_exception(exc)
    return True


@dataclass(slots=True, eq=False)
class Pending(Generic[T, R]):
    """One submitted item and the future its caller awaits."""

    item: T
    future: asyncio.Future[Completed[R]]
    enqueued_at: float
    deadline: float | None
    timer: asyncio.TimerHandle | None = None
    queued: bool = True
    dead: bool = False

    def expired(self, now: float) -> bool:
        """Whether the deadline has passed at ``now`` (monotonic seconds)."""
        return self.deadline is not None and self.deadline <= now

    def cancel_timer(self) -> None:
        """Stop the deadline timer, if any."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass(slots=True)
class Taken(Generic[T, R]):
    """What :meth:`PendingQueue.take` removed: the batch, and the items to drop instead."""

    batch: list[Pending[T, R]] = field(default_factory=list)
    expired: list[Pending[T, R]] = field(default_factory=list)
    cancelled: int = 0


class PendingQueue(Generic[T, R]):
    """A FIFO of :class:`Pending` that keeps count of its live items."""

    def __init__(self) -> None:
        self._items: deque[Pending[T, R]] = deque()
        self._dead = 0

    def __len__(self) -> int:
        """The number of live items (the queue depth)."""
        return len(self._items) - self._dead

    @property
    def slots_used(self) -> int:
        """Entries held, dead ones included (what bounds memory)."""
        return len(self._items)

    def push(self, entry: Pending[T, R]) -> None:
        self._items.append(entry)

    def mark_dead(self, entry: Pending[T, R]) -> bool:
        """Count a still-queued entry out; ``False`` if it left the queue or was dead already."""
        if not entry.queued or entry.dead:
            return False
        entry.dead = True
        entry.cancel_timer()
        self._dead += 1
        return True

    def oldest(self) -> Pending[T, R] | None:
        """The oldest live entry, after dropping dead ones from the head."""
        items = self._items
        while items and items[0].dead:
            items.popleft().queued = False
            self._dead -= 1
        return items[0] if items else None

    def take(self, limit: int, now: float,
             key: Callable[[T], Hashable] | None = None) -> Taken[T, R]:
        """Remove up to ``limit`` runnable entries from the head, oldest first.

        Entries whose caller was cancelled (but not yet counted out) and expired ones are
        removed too and returned apart, so that they never reach ``batch_fn``. With ``key``,
        the batch holds only entries of the oldest runnable entry's key; the others stay
        queued, in their order.
        """
        taken: Taken[T, R] = Taken()
        items = self._items
        skipped: list[Pending[T, R]] = []
        batch_key: Hashable = _NO_KEY
        while items and len(taken.batch) < limit:
            entry = items.popleft()
            if entry.dead:
                entry.queued = False
                self._dead -= 1
                continue
            runnable = not entry.future.done() and not entry.expired(now)
            if runnable and key is not None:
                k = key(entry.item)
                if batch_key is _NO_KEY:
                    batch_key = k
                elif k != batch_key:
                    skipped.append(entry)
                    continue
            entry.queued = False
            entry.cancel_timer()
            if entry.future.done():
                taken.cancelled += 1
            elif entry.expired(now):
                taken.expired.append(entry)
            else:
                taken.batch.append(entry)
        items.extendleft(reversed(skipped))
        return taken

    def compact(self) -> None:
        """Remove every dead entry (O(n); called only when the deque reaches its bound)."""
        if self._dead:
            self._items = deque(entry for entry in self._items if not entry.dead)
            self._dead = 0

    def take_all(self) -> list[Pending[T, R]]:
        """Remove every entry; return the live ones."""
        live = [entry for entry in self._items if not entry.dead]
        for entry in self._items:
            entry.queued = False
            entry.cancel_timer()
        self._items.clear()
        self._dead = 0
        return live


def fail_all(entries: Iterable[Pending[Any, Any]], make: Callable[[], BaseException]) -> int:
    """Fail every entry not settled yet with a fresh exception from ``make``; count them."""
    failed = 0
    for entry in entries:
        if not entry.future.done():
            settle_exception(entry.future, make())
            failed += 1
    return failed

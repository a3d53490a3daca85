"""A bounded sliding window over a lazy stream of inputs, and the per-item outcomes it yields.

At most ``concurrency`` tasks exist at any time (in ordered mode, finished results waiting for
an earlier one count too, so memory stays bounded behind a slow item); the source is read only to
refill the window, so a generator of a million paths is consumed as the work goes. When the
consumer stops (an exception, cancellation, ``break`` followed by closing the generator), every
task still running is cancelled and awaited before the generator finishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from typing import Generic, TypeVar

from clients._images import ImageInput
from clients.errors import ClientError
from wire.schemas import DetectionResult

__all__ = ["ItemError", "ItemResult", "Progress", "bounded_map"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One input's detections; ``index`` is its position in the input stream."""

    index: int
    input: ImageInput
    result: DetectionResult
    latency_s: float

    @property
    def ok(self) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class ItemError:
    """One input's failure, after its retries; the other inputs go on."""

    index: int
    input: ImageInput
    error: ClientError
    latency_s: float

    @property
    def ok(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a ``detect_many`` run stands, passed to ``on_progress`` after each item."""

    completed: int
    failed: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        """Items completed per second so far."""
        return self.completed / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _End:
    """Marks the end of the source."""


_END = _End()


class _Source(Generic[T]):
    """Pulls one item at a time from a sync or async iterable."""

    def __init__(self, items: Iterable[T] | AsyncIterable[T]) -> None:
        self._async: AsyncIterator[T] | None = None
        self._sync: Iterator[T] | None = None
        if isinstance(items, AsyncIterable):
            self._async = aiter(items)
        else:
            self._sync = iter(items)

    async def pull(self) -> T | _End:
        if self._async is not None:
            return await anext(self._async, _END)
        assert self._sync is not None
        return next(self._sync, _END)


async def bounded_map(
    items: Iterable[T] | AsyncIterable[T],
    fn: Callable[[int, T], Awaitable[R]],
    *,
    concurrency: int,
    ordered: bool = False,
) -> AsyncGenerator[R, None]:
    """Yield ``await fn(index, item)`` for each item, running at most ``concurrency`` at once.

    Unordered, results come as they finish; ordered, in input order. An exception from ``fn`` ends
    the iteration (after cancelling the rest); catch per-item failures inside ``fn``.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    source = _Source(items)
    pending: dict[asyncio.Task[R], int] = {}
    finished: dict[int, R] = {}  # ordered mode: done, waiting for an earlier index
    next_in = next_out = 0
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) + len(finished) < concurrency:
                item = await source.pull()
                if isinstance(item, _End):
                    exhausted = True
                else:
                    pending[asyncio.ensure_future(fn(next_in, item))] = next_in
                    next_in += 1
            if not pending:
                return
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=pending.__getitem__):
                index = pending[task]
                result = task.result()
                del pending[task]
                if ordered:
                    finished[index] = result
                else:
                    yield result
            while next_out in finished:
                yield finished.pop(next_out)
                next_out += 1
    finally:
        await _cancel_all(pending)


async def _cancel_all(tasks: Iterable[asyncio.Task[R]]) -> None:
    """Cancel ``tasks`` and wait until each has finished, so none is left behind."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)

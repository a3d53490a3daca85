"""Admission: the one rule that decides overload.

An image is admitted before any work is spent on it and counted until its answer is ready
(decoding, waiting in the batcher's queue, or running). The service is overloaded when the
images admitted reach ``capacity``: what the queue holds (``max_queue``) plus what the running
batches hold (``max_batch_size`` x concurrent batches). Refusing here, the batcher's
``QueueFull`` (its queue is bounded by the same capacity, so it cannot refuse first) and
``/health/ready``'s ``overloaded`` all follow this rule, and every refusal carries the batcher's
estimate of when there will be room.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from service.errors import Overloaded

__all__ = ["Admission", "capacity"]


def capacity(max_queue: int, max_batch_size: int, concurrent_batches: int) -> int:
    return max_queue + max_batch_size * concurrent_batches


class _Batcher(Protocol):
    """What admission needs of the batcher (``batching.DynamicBatcher``)."""

    def retry_after(self, waiting: int | None = None) -> float: ...


class Admission:
    def __init__(self, capacity: int, batcher: _Batcher) -> None:
        self.capacity = capacity
        self._batcher = batcher
        self.admitted = 0

    @property
    def overloaded(self) -> bool:
        return self.admitted >= self.capacity

    def retry_after(self) -> float:
        """Seconds until there is likely room: the batcher's estimate, as its ``QueueFull`` has."""
        return self._batcher.retry_after()

    def refusal(self) -> Overloaded:
        return Overloaded("the inference queue is full; retry later", retry_after=self.retry_after())

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one place while the block runs; raise :class:`Overloaded` when there is none."""
        if self.admitted >= self.capacity:
            raise self.refusal()
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

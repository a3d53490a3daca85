"""Admission: the one rule that decides overload, for the whole process.

An image is admitted before any work is spent on it and counted until its answer is ready
(decoding, waiting in a batcher's queue, or running), whichever model, protocol or stream sent it.
The process is overloaded when the images admitted reach ``capacity``: what the queues hold
(``max_queue``) plus what the running passes hold (``max_batch_size`` x the device's slots).
Refusing here, the batchers' ``QueueFull`` (each queue is bounded by the same capacity, so none can
refuse first) and ``/health/ready``'s ``overloaded`` all follow this rule, and every refusal
carries the device's estimate of when there will be room.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from service.errors import Overloaded

__all__ = ["Admission", "capacity"]


def capacity(max_queue: int, max_batch_size: int, concurrent_batches: int) -> int:
    return max_queue + max_batch_size * concurrent_batches


class _Device(Protocol):
    """What admission needs of the device (``batching.Device``)."""

    def retry_after(self, waiting: int | None = None) -> float: ...


class Admission:
    def __init__(self, capacity: int, device: _Device) -> None:
        self.capacity = capacity
        self._device = device
        self.admitted = 0

    @property
    def overloaded(self) -> bool:
        return self.admitted >= self.capacity

    def retry_after(self) -> float:
        """Seconds until there is likely room: the device's estimate, as ``QueueFull`` has."""
        return self._device.retry_after()

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

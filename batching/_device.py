"""The device: the forward-pass slots one process has, shared by every batcher given it.

A process that serves several models (and each model's raw network) runs all of their batches on
one CPU or GPU. Each batcher owning its own workers would let their passes overlap beyond what the
hardware runs well (two models each sized for every core run twice the passes the cores hold), and
each would call itself idle while the others kept the device busy. So the slots belong to the
device: a batcher dispatches only while a slot is free (or stages one full batch while none is),
"idle" means no pass is running on the device, and when a pass returns its slot is offered to the
batchers in the order of their oldest waiting item, so no model starves another.

A batcher made without a device gets one of its own, sized by its ``max_concurrent_batches``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from ._policy import RetryAfterEstimator, check_settings
from ._workers import shutdown_executor

__all__ = ["Device"]


class _Client(Protocol):
    """What the device needs of a batcher attached to it."""

    @property
    def queue_depth(self) -> int: ...

    def oldest_enqueued_at(self) -> float | None: ...

    def slot_freed(self) -> None: ...

    def wake(self) -> None: ...


class Device:
    """``slots`` forward passes at once, in worker threads, for every batcher attached.

    Counters are touched on the event loop only; ``peak`` (the most passes seen running at once,
    counted inside the worker threads) is what a test or a metric reads to check the bound.
    """

    def __init__(self, slots: int, *, name: str = "device") -> None:
        check_settings(1, 0.0, 1, slots)
        self.slots = slots
        self.name = name
        self.busy = 0  # passes dispatched whose first call has not returned (a staged one too)
        self._clients: list[_Client] = []
        self._executor: ThreadPoolExecutor | None = None
        self._retry = RetryAfterEstimator(slots)
        self._running = 0  # passes inside a worker thread right now
        self._peak = 0
        self._lock = threading.Lock()

    # -- the worker threads --------------------------------------------------------------------

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.slots, thread_name_prefix=f"{self.name}-slot")
        return self._executor

    async def close(self, grace: float = 1.0) -> bool:
        """Shut the worker threads down, waiting up to ``grace`` seconds for a pass still running
        (a later batch would start new ones). Tells whether every thread has exited."""
        executor, self._executor = self._executor, None
        if executor is None:
            return True
        return await shutdown_executor(executor, name=self.name, grace=grace)

    def entered(self) -> None:
        """A pass starts in a worker thread."""
        with self._lock:
            self._running += 1
            self._peak = max(self._peak, self._running)

    def exited(self) -> None:
        with self._lock:
            self._running -= 1

    @property
    def peak(self) -> int:
        """The most forward passes that ran at once since the device was made."""
        return self._peak

    # -- the slots -----------------------------------------------------------------------------

    def attach(self, client: _Client) -> None:
        if client not in self._clients:
            self._clients.append(client)

    def detach(self, client: _Client) -> None:
        if client in self._clients:
            self._clients.remove(client)

    @property
    def full(self) -> bool:
        return self.busy >= self.slots

    @property
    def staged(self) -> bool:
        """A full batch already waits in the executor for the first slot to free."""
        return self.busy > self.slots

    def first_in_line(self, client: _Client) -> bool:
        """Whether ``client`` holds the oldest waiting item of every batcher on the device: only
        it may stage a batch, so a busy model's full batches never starve another's."""
        mine = client.oldest_enqueued_at()
        if mine is None:
            return False
        return all(c is client or (t := c.oldest_enqueued_at()) is None or mine <= t
                   for c in self._clients)

    def acquire(self) -> None:
        self.busy += 1

    def release(self) -> None:
        """A pass returned: offer its slot to the batchers, oldest waiting item first, then wake
        every one of them (their timers may now be due, or their threshold changed)."""
        self.busy -= 1
        waiting = [(t, i, c) for i, c in enumerate(self._clients)
                   if (t := c.oldest_enqueued_at()) is not None]
        for _, _, client in sorted(waiting, key=lambda w: (w[0], w[1])):
            if self.full:
                break
            client.slot_freed()
        for client in list(self._clients):
            client.wake()

    # -- when there will be room ---------------------------------------------------------------

    def record(self, items: int, seconds: float) -> None:
        """A batch of ``items`` took ``seconds`` from dispatch to done (for ``retry_after``)."""
        self._retry.record(items, seconds)

    @property
    def queued(self) -> int:
        """Items waiting in every attached batcher."""
        return sum(c.queue_depth for c in self._clients)

    def retry_after(self, waiting: int | None = None) -> float:
        """Seconds a refused caller should wait: ``waiting`` items (default: every batcher's
        queue) at the device's recent throughput."""
        return self._retry.retry_after(self.queued if waiting is None else waiting)

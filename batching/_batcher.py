"""The dynamic batcher: a bounded queue, one dispatcher task, and batches run in worker threads.

When a batch goes (the dispatcher's rule, in order)::

    every worker busy, and a staged batch waits already   → wait for a worker to return
    every worker busy; a full batch waiting               → stage it, reason "full"
    every worker busy                                     → wait for a full batch or a worker
    effective_max_batch_size items waiting                → send, reason "full"
    closing                                               → send, reason "drain"
    no worker busy (the device is idle)                   → send at once, reason "idle"
    the oldest item has waited max_wait                   → send, reason "timeout"
    otherwise                                             → wait for more items or that time

So a lone request never waits for a timer while the device has nothing to do, and under load
items gather while a batch runs: batches grow with the load.

With a ``latency_target`` (:mod:`._latency`), "full" means the plan's batch size, which keeps
an item's predicted time (queue wait + its batch's pass, from a cost model kept up to date) under
the target, and the batcher also waits while the plan's number of passes is in flight: smaller
batches and fewer passes only when the cost model says the target needs them.

A *staged* batch is one full batch handed to the worker pool while every worker is busy: the
first worker to finish starts it at once, in its own thread, without waiting for the event
loop (which under load is busy with the answers of the batch that just finished, so a worker
waiting for it would sit idle between passes; see ``bench/README.md``, "Batch staging").
Its items are checked for a passed deadline or a departed caller just before the call. Only a
full batch is staged, so staging never makes batches smaller.

When a worker returns, the next batch is dispatched from the callback of its call's future,
before the results are delivered. The dispatcher sleeps on a future that ``submit``, a
returning worker, a timer or ``close`` completes; it never polls.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
from collections.abc import Callable, Coroutine, Hashable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._device import Device
from ._errors import BatchingError, DeadlineExceeded, QueueFull, ShuttingDown
from ._latency import LatencyPlan, LatencyPlanner
from ._observer import BatchObserver, GuardedObserver, NullObserver
from ._pending import Pending, PendingQueue, fail_all, settle_exception, settle_result
from ._policy import check_settings, default_is_oom
from ._runner import BatchReport, BatchRunner
from ._types import BatcherState, Completed, DispatchReason, DropReason

__all__ = ["DynamicBatcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_NEVER = sys.maxsize
"""A wake-up threshold no queue depth reaches."""

_WORKER_EXIT_GRACE = 1.0
"""Seconds ``close`` waits for worker threads still inside ``batch_fn`` after the drain."""


class DynamicBatcher(Generic[T, R]):
    """Gathers items submitted one by one into batches for a blocking ``batch_fn``.

    Use it as ``async with DynamicBatcher(fn) as batcher: await batcher.submit(x)``, or call
    ``start()`` and ``close()`` (``submit`` also starts it). It belongs to the event loop that
    started it.

    Args:
        batch_fn: ``batch_fn(items) -> results``, blocking; runs in a worker thread and must
            return one result per item, in order (else ``BatchContractError``). When it raises
            on several items the batch is bisected, so only the failing item gets the error.
        max_batch_size: most items in one call of ``batch_fn``.
        max_wait: seconds the oldest item may wait for a fuller batch while another batch
            runs; never waited while no batch is in flight.
        max_queue: most items waiting; beyond it ``submit`` raises ``QueueFull`` at once.
        max_concurrent_batches: calls of ``batch_fn`` at once (worker threads); one more full
            batch may be staged for them while they are all busy. Ignored when ``device`` is
            given: the device's slots bound the calls of every batcher sharing it.
        device: the forward-pass slots shared with other batchers (:class:`Device`); without
            one the batcher has a device of its own with ``max_concurrent_batches`` slots.
        observer: receives batch, drop and queue-depth events (for metrics).
        is_oom: tells an out-of-memory error, which halves the batch size from then on;
            default :func:`default_is_oom`.
        group_key: items whose keys differ never share a batch (e.g. images of different
            shapes): a batch takes the oldest item's key and the items of that key behind
            it, in order; the others wait, in their order, for the next batch.
        name: names the worker threads, the tasks and the log lines.
        latency_target: seconds an item may spend in the batcher (queue + pass), predicted;
            batches and passes in flight are capped to keep to it when they must (None: off).
    """

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 8,
        max_wait: float = 0.005,
        max_queue: int = 256,
        max_concurrent_batches: int = 1,
        observer: BatchObserver | None = None,
        is_oom: Callable[[BaseException], bool] | None = None,
        name: str = "batcher",
        group_key: Callable[[T], Hashable] | None = None,
        device: Device | None = None,
        latency_target: float | None = None,
    ) -> None:
        check_settings(max_batch_size, max_wait, max_queue, max_concurrent_batches)
        self._fn = batch_fn
        self._max_wait = max_wait
        self._max_queue = max_queue
        self._owns_device = device is None
        self._device = Device(max_concurrent_batches, name=name) if device is None else device
        self._observer: NullObserver | GuardedObserver = (
            NullObserver() if observer is None else GuardedObserver(observer)
        )
        self._is_oom = default_is_oom if is_oom is None else is_oom
        self._name = name
        self._group_key = group_key
        self._state = BatcherState.CREATED
        self._queue: PendingQueue[T, R] = PendingQueue()
        self._effective_max = max_batch_size
        self._planner = (None if latency_target is None
                         else LatencyPlanner(latency_target, max_batch_size, self._device.slots))
        self._inflight = 0  # batches launched and not yet finished (settled)
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Future[None] | None = None
        self._wake_threshold = _NEVER
        self._drained: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] | None = None

    # -- introspection -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def state(self) -> BatcherState:
        return self._state

    @property
    def queue_depth(self) -> int:
        """Items waiting to be dispatched (callers that left are not counted)."""
        return len(self._queue)

    @property
    def inflight_batches(self) -> int:
        return self._inflight

    def retry_after(self, waiting: int | None = None) -> float:
        """Seconds a refused caller should wait: the time to run ``waiting`` items (default: the
        queue) at the throughput of recent batches."""
        return self._device.retry_after(len(self._queue) if waiting is None else waiting)

    @property
    def device(self) -> Device:
        return self._device

    def oldest_enqueued_at(self) -> float | None:
        """When the oldest item still waiting arrived (the device serves the oldest first)."""
        oldest = self._queue.oldest()
        return None if oldest is None else oldest.enqueued_at

    @property
    def latency_plan(self) -> LatencyPlan | None:
        """The latency target's caps now (None without a target)."""
        return None if self._planner is None else self._planner.plan

    def _batch_limit(self, now: float) -> int:
        """The most items the next batch takes: the latency plan's, within the OOM bound."""
        oldest = self._queue.oldest()
        if self._planner is None or oldest is None:
            return self._effective_max
        concurrent = min(self._device.busy + 1, self._device.slots)
        return min(self._effective_max,
                   self._planner.batch_size(now - oldest.enqueued_at, concurrent))

    def _capped(self) -> bool:
        """The latency plan's passes are in flight: the next batch waits for one to return."""
        return self._planner is not None and self._device.busy >= self._planner.plan.max_inflight

    @property
    def effective_max_batch_size(self) -> int:
        """``max_batch_size``, halved by every out-of-memory failure (never below 1)."""
        return self._effective_max

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the dispatcher and the worker threads; a no-op when already running."""
        self._start()

    async def __aenter__(self) -> DynamicBatcher[T, R]:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _start(self) -> None:
        if self._state is BatcherState.RUNNING:
            return
        if self._state is not BatcherState.CREATED:
            raise RuntimeError(f"{self._name} is {self._state.value}; it cannot start again")
        self._loop = asyncio.get_running_loop()
        self._device.attach(self)
        self._runner: BatchRunner[T, R] = BatchRunner(
            functools.partial(_on_device, self._device, self._fn),
            self._device.executor,
            is_oom=self._is_oom,
            on_oom=self._shrink,
            on_finished=self._batch_finished,
            on_returned=self._worker_returned,
            spawn=self._spawn,
            observer=self._observer,
            name=self._name,
        )
        self._state = BatcherState.RUNNING
        if self._planner is not None:
            plan = self._planner.plan
            self._observer.on_latency_plan(plan.max_batch_size, plan.max_inflight)
        self._spawn(self._dispatch_loop(), f"{self._name}-dispatcher")

    async def close(self, drain_timeout: float = 10.0) -> None:
        """Refuse new work, finish what is queued within ``drain_timeout`` seconds, fail the rest
        with ``ShuttingDown``, and stop every task and thread. Safe to call more than once."""
        if self._state is BatcherState.CREATED:
            self._state = BatcherState.CLOSED
            return
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = self._loop.create_future()
        try:
            # 1. Stop accepting: submit() refuses with ShuttingDown from now on, and the
            #    dispatcher sends what is queued at once (reason "drain").
            self._state = BatcherState.DRAINING
            self._wake_dispatcher()
            # 2. Drain: wait, bounded, until the queue is empty and no batch is in flight.
            await self._wait_drained(drain_timeout)
        finally:
            # 3. Fail what is left with ShuttingDown and cancel the background tasks.
            await self._abort_leftovers()
            # 4. Leave the device; a device of its own: shut its threads down, briefly waiting.
            self._device.detach(self)
            if self._owns_device:
                await self._device.close(_WORKER_EXIT_GRACE)
            self._state = BatcherState.CLOSED
            settle_result(self._closing, None)

    async def _wait_drained(self, limit: float) -> None:
        if self._is_drained():
            return
        self._drained = self._loop.create_future()
        try:
            async with asyncio.timeout(limit):
                await self._drained
        except TimeoutError:
            logger.warning(
                "%s: drain timed out after %.3gs with %d queued and %d batches in flight",
                self._name, limit, len(self._queue), self._inflight,
            )  # fmt: skip
        finally:
            self._drained = None

    async def _abort_leftovers(self) -> None:
        failed = fail_all(self._queue.take_all(), lambda: ShuttingDown("batcher closed"))
        if failed:
            self._observer.on_dropped(DropReason.SHUTDOWN, failed)
            self._observer.on_queue_depth(0)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- submitting ----------------------------------------------------------------------------

    async def submit(self, item: T, deadline: float | None = None) -> R:
        """Run ``item`` in a batch and return its result.

        ``deadline`` is an absolute ``time.monotonic()`` time; if it passes before the item's
        batch runs, the item is dropped and ``DeadlineExceeded`` raised. Raises ``QueueFull``
        (with ``retry_after``) at once when the queue is at its bound, ``ShuttingDown`` once
        closing, and whatever ``batch_fn`` raised for this very item.
        """
        return (await self.submit_detailed(item, deadline)).value

    async def submit_detailed(self, item: T, deadline: float | None = None) -> Completed[R]:
        """As :meth:`submit`, with the batch size, queue wait, execution time and reason."""
        entry = self._enqueue(item, deadline)
        try:
            return await entry.future
        except asyncio.CancelledError:
            # The caller left: drop the item now if it has not been dispatched yet.
            if self._queue.mark_dead(entry):
                self._observer.on_dropped(DropReason.CANCELLED, 1)
                self._observer.on_queue_depth(len(self._queue))
            raise

    def _enqueue(self, item: T, deadline: float | None) -> Pending[T, R]:
        if self._state is not BatcherState.RUNNING:
            if self._state is not BatcherState.CREATED:
                self._observer.on_dropped(DropReason.SHUTDOWN, 1)
                raise ShuttingDown(f"{self._name} is {self._state.value}; not accepting work")
            self._start()
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            self._observer.on_dropped(DropReason.EXPIRED, 1)
            raise DeadlineExceeded(f"deadline passed {now - deadline:.3f}s before submit")
        queue = self._queue
        if queue.slots_used >= self._max_queue:
            queue.compact()
            if len(queue) >= self._max_queue:
                self._refuse()
        entry: Pending[T, R] = Pending(item, self._loop.create_future(), now, deadline)
        if deadline is not None:
            entry.timer = self._loop.call_later(deadline - now, self._expire, entry)
        queue.push(entry)
        depth = len(queue)
        self._observer.on_queue_depth(depth)
        if depth >= self._wake_threshold:
            self._wake_dispatcher()
        return entry

    def _refuse(self) -> None:
        depth = len(self._queue)
        self._observer.on_dropped(DropReason.REFUSED, 1)
        raise QueueFull(
            f"{self._name}: queue full ({depth} items waiting)",
            retry_after=self._device.retry_after(depth),
            queue_depth=depth,
        )

    def _expire(self, entry: Pending[T, R]) -> None:
        """Deadline timer: fail the item now if it is still queued (not once it is running)."""
        entry.timer = None
        if self._queue.mark_dead(entry):
            settle_exception(entry.future, DeadlineExceeded("deadline passed while queued"))
            self._observer.on_dropped(DropReason.EXPIRED, 1)
            self._observer.on_queue_depth(len(self._queue))

    # -- dispatching ---------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        try:
            while True:
                step = self._next_step(time.monotonic())
                if isinstance(step, DispatchReason):
                    self._dispatch(step)
                else:
                    await self._sleep(*step)
        except Exception:
            logger.exception("%s: dispatcher failed; refusing new work", self._name)
            self._state = BatcherState.DRAINING
            failed = fail_all(self._queue.take_all(), lambda: BatchingError("dispatcher failed"))
            if failed:
                self._observer.on_dropped(DropReason.SHUTDOWN, failed)
            self._check_drained()

    def _next_step(self, now: float) -> DispatchReason | tuple[int, float | None]:
        """A reason to dispatch now, or what to wait for: (queue depth, deadline)."""
        oldest = self._queue.oldest()
        if oldest is None:
            self._check_drained()
            return (1, None)
        limit = self._batch_limit(now)
        full = len(self._queue) >= limit
        device = self._device
        if device.full:
            # one staged batch at most, and only from the batcher first in line for the device
            if device.staged or not device.first_in_line(self):
                return (_NEVER, None)
            return DispatchReason.FULL if full else (limit, None)
        if self._capped():
            return (_NEVER, None)  # a returning pass wakes the dispatcher
        if full:
            return DispatchReason.FULL
        if self._state is not BatcherState.RUNNING:
            return DispatchReason.DRAIN
        if device.busy == 0:
            return DispatchReason.IDLE
        due = oldest.enqueued_at + self._max_wait
        if now >= due:
            return DispatchReason.TIMEOUT
        return (limit, due)

    async def _sleep(self, threshold: int, due: float | None) -> None:
        """Wait until the queue reaches ``threshold``, a batch finishes, ``due``, or close."""
        wake: asyncio.Future[None] = self._loop.create_future()
        self._wake, self._wake_threshold = wake, threshold
        timer = None
        if due is not None:
            timer = self._loop.call_later(due - time.monotonic(), settle_result, wake, None)
        try:
            await wake
        finally:
            self._wake, self._wake_threshold = None, _NEVER
            if timer is not None:
                timer.cancel()

    def _wake_dispatcher(self) -> None:
        if self._wake is not None:
            settle_result(self._wake, None)

    def _dispatch(self, reason: DispatchReason) -> None:
        now = time.monotonic()
        taken = self._queue.take(self._batch_limit(now), now, self._group_key)
        if taken.cancelled:
            self._observer.on_dropped(DropReason.CANCELLED, taken.cancelled)
        if taken.expired:
            fail_all(taken.expired, lambda: DeadlineExceeded("deadline passed while queued"))
            self._observer.on_dropped(DropReason.EXPIRED, len(taken.expired))
        self._observer.on_queue_depth(len(self._queue))
        if taken.batch:
            self._inflight += 1
            self._device.acquire()
            concurrent = min(self._device.busy, self._device.slots)
            self._runner.launch(taken.batch, BatchReport(reason, now, concurrent=concurrent))

    def _worker_returned(self) -> None:
        """A batch's first call of ``batch_fn`` returned: its slot can take the next batch.

        The device offers the slot at once (to this batcher or another sharing the device),
        rather than through the dispatcher tasks: they would run only after the finished batch's
        callers have built their answers. (A failed batch retries its halves after this; those
        calls queue behind the new batch's.)
        """
        self._device.release()

    def slot_freed(self) -> None:
        """The device has a free slot for this batcher's oldest waiting item: dispatch if the
        rule says so now."""
        if self._state is BatcherState.CLOSED:
            return
        try:
            step = self._next_step(time.monotonic())
            if isinstance(step, DispatchReason):
                self._dispatch(step)
        except Exception:  # a loop callback: log it, and let the dispatcher task try again
            logger.exception("%s: dispatch from a returning worker failed", self._name)

    def wake(self) -> None:
        """The device changed (a slot freed): the dispatcher looks again."""
        self._wake_dispatcher()

    def _batch_finished(self, batch: list[Pending[T, R]], report: BatchReport) -> None:
        """Called once per launched batch, whatever happened to it; its items are settled."""
        self._inflight -= 1
        started_at = report.dispatched_at if report.started_at is None else report.started_at
        self._device.record(len(batch), time.monotonic() - started_at)
        if self._planner is not None and not report.failed:
            before = self._planner.plan
            plan = self._planner.record(len(batch), report.concurrent, report.exec_seconds,
                                        self._effective_max)
            if plan != before:
                self._observer.on_latency_plan(plan.max_batch_size, plan.max_inflight)
        waits = [started_at - entry.enqueued_at for entry in batch]
        self._observer.on_batch(
            len(batch), report.reason, report.exec_seconds, waits, report.failed
        )
        self._wake_dispatcher()
        self._check_drained()

    def _shrink(self, failed_size: int) -> None:
        """Out of memory on a batch of ``failed_size``: later batches are at most half of it."""
        smaller = min(self._effective_max, max(1, (failed_size + 1) // 2))
        if smaller < self._effective_max:
            logger.warning(
                "%s: out of memory on a batch of %d; max batch size %d -> %d",
                self._name, failed_size, self._effective_max, smaller,
            )  # fmt: skip
            self._effective_max = smaller

    def _is_drained(self) -> bool:
        return len(self._queue) == 0 and self._inflight == 0

    def _check_drained(self) -> None:
        if self._drained is not None and self._is_drained():
            settle_result(self._drained, None)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("%s: task %s failed", self._name, task.get_name(), exc_info=exc)


def _on_device(device: Device, fn: Callable[[list[T]], Sequence[R]], items: list[T]) -> Sequence[R]:
    """``fn(items)`` in a worker thread, counted as a pass running on ``device``."""
    device.entered()
    try:
        return fn(items)
    finally:
        device.exited()

"""Runs one dispatched batch: ``batch_fn`` in a worker thread, the output contract, bisection,
and one guard around the whole batch so that every item's future is settled on every path.

A failing batch of several items is split in halves and each half retried, recursively, until
the item that really fails is alone and gets its own exception; one poisoned item in a batch of
``N`` costs ``2·log2(N)`` extra calls. An out-of-memory failure also shrinks the batch size used
from then on (through ``on_oom``) before the halves are retried.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence, Sized
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar, cast

from ._errors import BatchContractError, BatchingError, DeadlineExceeded, ShuttingDown
from ._observer import BatchObserver
from ._pending import Pending, fail_all, settle_exception, settle_result
from ._types import Completed, DispatchReason, DropReason

__all__ = ["BatchReport", "BatchRunner"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _Outcome(NamedTuple):
    live: list[Any]  # the entries batch_fn was called on, in order
    outputs: object
    error: Exception | None
    seconds: float
    started_at: float  # time.monotonic() when the worker took the batch


def _call_blocking(fn: Callable[[list[T]], Sequence[R]], entries: list[Pending[T, R]]) -> _Outcome:
    """Runs in the worker thread: drop what is dead, call ``fn`` once, time it, catch what it raises.

    A batch may wait in the worker pool's queue (see ``DynamicBatcher``'s staged batch), so
    entries whose caller left or whose deadline passed meanwhile are left out here, in the
    worker, just before the call; the event loop settles them afterwards. (Reading a future's
    state from this thread is safe under the GIL; a caller leaving after this check is the
    same as one leaving during the call.)
    """
    now = time.monotonic()
    live = [e for e in entries if not e.future.done() and not e.expired(now)]
    if not live:
        return _Outcome(live, [], None, 0.0, now)
    start = time.perf_counter()
    try:
        outputs = fn([e.item for e in live])
    except Exception as exc:
        return _Outcome(live, None, exc, time.perf_counter() - start, now)
    except BaseException as exc:  # SystemExit & co. must not reach the event loop through us
        error = BatchingError(f"batch_fn raised {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return _Outcome(live, None, error, time.perf_counter() - start, now)
    return _Outcome(live, outputs, None, time.perf_counter() - start, now)


def _contract_problem(outputs: object, expected: int) -> str | None:
    """What is wrong with ``outputs`` as the results of ``expected`` inputs, or ``None``."""
    if not isinstance(outputs, Sized) or not isinstance(outputs, Iterable):
        return f"batch_fn returned {type(outputs).__name__}, not a sequence"
    if len(outputs) != expected:
        return f"batch_fn returned {len(outputs)} results for {expected} inputs"
    return None


@dataclass(slots=True)
class BatchReport:
    """What the runner learnt about one dispatched batch, for the observer."""

    reason: DispatchReason
    dispatched_at: float
    started_at: float | None = None  # when a worker took it (later than dispatch when staged)
    exec_seconds: float = 0.0
    concurrent: int = 1  # passes on the device once this one was dispatched (for the cost model)
    failed: bool = False
    finished: bool = False


class BatchRunner(Generic[T, R]):
    """Executes dispatched batches; settles each item's future with its result or its error."""

    def __init__(
        self,
        batch_fn: Callable[[list[T]], Sequence[R]],
        executor: Executor,
        *,
        is_oom: Callable[[BaseException], bool],
        on_oom: Callable[[int], None],
        on_finished: Callable[[list[Pending[T, R]], BatchReport], None],
        on_returned: Callable[[], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
        observer: BatchObserver,
        name: str,
    ) -> None:
        self._fn = batch_fn
        self._executor = executor
        self._is_oom = is_oom
        self._on_oom = on_oom
        self._on_finished = on_finished
        self._on_returned = on_returned
        self._spawn = spawn
        self._observer = observer
        self._name = name

    def launch(self, batch: list[Pending[T, R]], report: BatchReport) -> None:
        """Run a dispatched batch in a task; ``on_finished`` is called once when it is over."""
        # batch_fn starts now; the task that awaits it only runs on the next loop iteration.
        started = self.call(batch)
        # The worker is free once this first call returns: say so from the future's own
        # callback, which runs before the task that delivers the results (and before the
        # callers it wakes), so the next batch starts without waiting behind that work.
        started.add_done_callback(lambda _f: self._on_returned())
        task = self._spawn(self._guarded(batch, report, started), f"{self._name}-batch")
        task.add_done_callback(functools.partial(self._safety_net, batch, report))

    async def _guarded(
        self, batch: list[Pending[T, R]], report: BatchReport, started: asyncio.Future[_Outcome]
    ) -> None:
        try:
            await self.run(batch, report, started)
        except asyncio.CancelledError:
            self._fail_closed(batch, report)
            raise
        except Exception:
            logger.exception("%s: internal error while running a batch", self._name)
        finally:
            self._finish(batch, report)

    def _safety_net(
        self, batch: list[Pending[T, R]], report: BatchReport, task: asyncio.Task[None]
    ) -> None:
        """A task cancelled before its first step never ran its ``finally``: finish it here."""
        if not report.finished:
            self._fail_closed(batch, report)
            self._finish(batch, report)

    def _fail_closed(self, batch: list[Pending[T, R]], report: BatchReport) -> None:
        failed = fail_all(batch, lambda: ShuttingDown("batcher closed before the batch finished"))
        if failed:
            report.failed = True
            self._observer.on_dropped(DropReason.SHUTDOWN, failed)

    def _finish(self, batch: list[Pending[T, R]], report: BatchReport) -> None:
        report.finished = True
        # Every future is settled on every path: what is left now is an internal error.
        if fail_all(batch, lambda: BatchingError("internal error in the batcher")):
            report.failed = True
        self._on_finished(batch, report)

    def call(self, live: list[Pending[T, R]]) -> asyncio.Future[_Outcome]:
        """Start one call of ``batch_fn`` on the items of ``live`` in a worker thread."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, _call_blocking, self._fn, live)

    async def run(
        self,
        entries: list[Pending[T, R]],
        report: BatchReport,
        started: asyncio.Future[_Outcome] | None = None,
    ) -> None:
        """Run ``entries`` (bisecting on failure) until every one of them is settled.

        ``started`` is a call already started on exactly ``entries`` (by the dispatcher, so
        that the worker thread starts without waiting for this coroutine's first step).
        """
        live = entries
        if started is None:
            live = self._prune(entries)
            if not live:
                return
            started = self.call(live)
        outcome = await started
        if report.started_at is None:
            report.started_at = outcome.started_at
        if len(outcome.live) < len(live):
            # The worker left these out: what it found dead is still dead, so _prune settles it.
            ran = {id(entry) for entry in outcome.live}
            self._prune([entry for entry in live if id(entry) not in ran])
            live = outcome.live
            if not live:
                return
        report.exec_seconds += outcome.seconds
        if outcome.error is None:
            self._deliver(live, outcome, report)
        else:
            await self._recover(live, outcome.error, report)

    def _prune(self, entries: list[Pending[T, R]]) -> list[Pending[T, R]]:
        """Drop entries whose caller left or whose deadline passed; they never reach batch_fn."""
        now = time.monotonic()
        live: list[Pending[T, R]] = []
        cancelled = expired = 0
        for entry in entries:
            if entry.future.done():
                cancelled += entry.future.cancelled()
            elif entry.expired(now):
                expired += 1
                settle_exception(entry.future, DeadlineExceeded("deadline passed before it ran"))
            else:
                live.append(entry)
        if cancelled:
            self._observer.on_dropped(DropReason.CANCELLED, cancelled)
        if expired:
            self._observer.on_dropped(DropReason.EXPIRED, expired)
        return live

    def _deliver(self, live: list[Pending[T, R]], outcome: _Outcome, report: BatchReport) -> None:
        outputs = outcome.outputs
        problem = _contract_problem(outputs, len(live))
        if problem is not None:
            logger.error("%s: %s; failing the batch with BatchContractError", self._name, problem)
            report.failed = True
            for entry in live:
                settle_exception(entry.future, BatchContractError(problem))
            return
        size = len(live)
        for entry, value in zip(live, cast("Iterable[R]", outputs), strict=True):
            wait = outcome.started_at - entry.enqueued_at
            done = Completed(value, size, wait, outcome.seconds, report.reason)
            settle_result(entry.future, done)

    async def _recover(
        self, live: list[Pending[T, R]], error: Exception, report: BatchReport
    ) -> None:
        if len(live) > 1 and self._oom(error):
            self._on_oom(len(live))  # one item too big for the device says nothing of batches
        if len(live) == 1:
            report.failed = True
            logger.warning("%s: batch_fn failed for one item: %r", self._name, error)
            settle_exception(live[0].future, error)
            return
        logger.debug("%s: batch of %d failed (%r); retrying halves", self._name, len(live), error)
        middle = len(live) // 2
        await self.run(live[:middle], report)
        await self.run(live[middle:], report)

    def _oom(self, error: Exception) -> bool:
        try:
            return bool(self._is_oom(error))
        except Exception:
            logger.exception("%s: is_oom raised; taking the error as not out-of-memory", self._name)
            return False

"""Helpers for the batcher's tests: a batch function the test controls, and a recording observer.

Imported by the test modules as ``batching_testkit`` (pytest puts this folder on ``sys.path``);
its name is unique so that it can't clash with other packages' test helpers.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from batching import BatcherState, DispatchReason, DropReason, DynamicBatcher

__all__ = [
    "BatchEvent",
    "Gate",
    "RecordingObserver",
    "assert_no_leftovers",
    "state_of",
    "yield_loop",
]


class Gate:
    """A blocking ``batch_fn`` that the test drives.

    Each call records its items, tells the event loop it started (``await gate.started()``)
    and blocks until the test lets it through: ``release(n)`` lets ``n`` calls through,
    ``open()`` lets every call through from now on. ``fn`` maps one item to its result or
    raises for it; the results are returned in order.
    """

    def __init__(self, fn: Callable[[int], object] = lambda x: x * 10, *, opened: bool = False):
        self._loop = asyncio.get_running_loop()
        self._fn = fn
        self._cond = threading.Condition()
        self._permits = 0
        self._opened = opened
        self._started: asyncio.Queue[list[int]] = asyncio.Queue()
        self.calls: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[object]:
        batch = list(items)
        self.calls.append(batch)
        self._loop.call_soon_threadsafe(self._started.put_nowait, batch)
        with self._cond:
            if not self._cond.wait_for(lambda: self._opened or self._permits > 0, timeout=30):
                raise TimeoutError("the test never released this batch")
            if not self._opened:
                self._permits -= 1
        return [self._fn(x) for x in batch]

    def release(self, calls: int = 1) -> None:
        with self._cond:
            self._permits += calls
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._opened = True
            self._cond.notify_all()

    async def started(self, within: float = 5.0) -> list[int]:
        """The items of the next call that started (waits for it)."""
        async with asyncio.timeout(within):
            return await self._started.get()

    @property
    def seen(self) -> set[int]:
        """Every item that ever reached the batch function."""
        return {item for call in self.calls for item in call}


@dataclass(frozen=True)
class BatchEvent:
    size: int
    reason: DispatchReason
    exec_seconds: float
    queue_waits: tuple[float, ...]
    failed: bool


@dataclass
class RecordingObserver:
    """Records every observer event."""

    batches: list[BatchEvent] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    depths: list[int] = field(default_factory=list)
    plans: list[tuple[int, int]] = field(default_factory=list)

    def on_batch(
        self,
        size: int,
        reason: DispatchReason,
        exec_seconds: float,
        queue_waits: Sequence[float],
        failed: bool,
    ) -> None:
        self.batches.append(BatchEvent(size, reason, exec_seconds, tuple(queue_waits), failed))

    def on_dropped(self, reason: DropReason, count: int) -> None:
        self.dropped[str(reason)] += count

    def on_queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def on_latency_plan(self, max_batch_size: int, max_inflight: int) -> None:
        self.plans.append((max_batch_size, max_inflight))


async def yield_loop(times: int = 5) -> None:
    """Let the event loop run other ready callbacks ``times`` times (no wall-clock wait)."""
    for _ in range(times):
        await asyncio.sleep(0)


def assert_no_leftovers(name: str) -> None:
    """No task but the current one is left on the loop, and no thread of batcher ``name``."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    assert not others, f"tasks left behind: {others}"
    threads = [t.name for t in threading.enumerate() if t.name.startswith(f"{name}-")]
    assert not threads, f"threads left behind: {threads}"


def state_of(batcher: DynamicBatcher[Any, Any]) -> BatcherState:
    """The batcher's state, read through a call so that type checkers don't narrow it."""
    return batcher.state

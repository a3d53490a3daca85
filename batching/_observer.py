"""The observer hook through which the service turns batcher events into metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from ._types import DispatchReason, DropReason

__all__ = ["BatchObserver", "GuardedObserver", "NullObserver"]

logger = logging.getLogger(__name__)


class BatchObserver(Protocol):
    """Receives the batcher's events; every method is called on the event loop and must be quick."""

    def on_batch(
        self,
        size: int,
        reason: DispatchReason,
        exec_seconds: float,
        queue_waits: Sequence[float],
        failed: bool,
    ) -> None:
        """A dispatched batch finished: its size when sent, why it was sent, the seconds spent
        in ``batch_fn`` (all calls, bisection included), each item's queue wait, and whether any
        of its items ended in an error."""

    def on_dropped(self, reason: DropReason, count: int) -> None:
        """``count`` items were dropped without running, for ``reason``."""

    def on_queue_depth(self, depth: int) -> None:
        """The number of items waiting changed to ``depth``."""


class NullObserver:
    """The default observer: ignores everything."""

    def on_batch(
        self,
        size: int,
        reason: DispatchReason,
        exec_seconds: float,
        queue_waits: Sequence[float],
        failed: bool,
    ) -> None:
        return None

    def on_dropped(self, reason: DropReason, count: int) -> None:
        return None

    def on_queue_depth(self, depth: int) -> None:
        return None

    def on_latency_plan(self, max_batch_size: int, max_inflight: int) -> None:
        return None


class GuardedObserver:
    """Wraps a user's observer so that an exception in it is logged, never breaks batching."""

    def __init__(self, inner: BatchObserver) -> None:
        self._inner = inner
        self._reported = False

    def _failed(self, method: str) -> None:
        # The full traceback once; after that a one-line warning, so a broken metric can't
        # flood the log at the request rate.
        logger.warning("batch observer %s failed", method, exc_info=not self._reported)
        self._reported = True

    def on_batch(
        self,
        size: int,
        reason: DispatchReason,
        exec_seconds: float,
        queue_waits: Sequence[float],
        failed: bool,
    ) -> None:
        try:
            self._inner.on_batch(size, reason, exec_seconds, queue_waits, failed)
        except Exception:
            self._failed("on_batch")

    def on_dropped(self, reason: DropReason, count: int) -> None:
        try:
            self._inner.on_dropped(reason, count)
        except Exception:
            self._failed("on_dropped")

    def on_queue_depth(self, depth: int) -> None:
        try:
            self._inner.on_queue_depth(depth)
        except Exception:
            self._failed("on_queue_depth")

    def on_latency_plan(self, max_batch_size: int, max_inflight: int) -> None:
        """The latency target's caps changed (an observer without this method is not told)."""
        method = getattr(self._inner, "on_latency_plan", None)
        if method is None:
            return
        try:
            method(max_batch_size, max_inflight)
        except Exception:
            self._failed("on_latency_plan")

"""Small value types shared by the batcher's modules: states, reasons and a completed item."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["BatcherState", "Completed", "DispatchReason", "DropReason"]

R = TypeVar("R")


class BatcherState(enum.Enum):
    """Lifecycle of a batcher: created → running → draining → closed (never back)."""

    CREATED = "created"
    RUNNING = "running"
    DRAINING = "draining"
    CLOSED = "closed"


class DispatchReason(enum.StrEnum):
    """Why a batch was sent to ``batch_fn``."""

    FULL = "full"
    """The queue held a full batch (``effective_max_batch_size`` items)."""
    TIMEOUT = "timeout"
    """The oldest item had waited ``max_wait`` while another batch was running."""
    IDLE = "idle"
    """No batch was in flight, so the items waiting went at once instead of waiting for a timer."""
    DRAIN = "drain"
    """The batcher is closing: what is queued goes at once."""


class DropReason(enum.StrEnum):
    """Why items were dropped without running (the ``reason`` of ``on_dropped``)."""

    EXPIRED = "expired"
    """Their deadline passed first; the caller got ``DeadlineExceeded``."""
    CANCELLED = "cancelled"
    """Their caller stopped waiting (its task was cancelled)."""
    REFUSED = "refused"
    """The queue was full; the caller got ``QueueFull``."""
    SHUTDOWN = "shutdown"
    """The batcher was closing or closed; the caller got ``ShuttingDown``."""


@dataclass(frozen=True, slots=True)
class Completed(Generic[R]):
    """One item's result with how it was batched.

    ``batch_size`` is the size of the ``batch_fn`` call that produced ``value`` (smaller than
    the dispatched batch when a failure was bisected); ``queue_wait`` is the time from
    ``submit`` to the start of its batch in a worker; ``exec_time`` is the duration of that ``batch_fn``
    call, in seconds; ``reason`` is why its batch was dispatched.
    """

    value: R
    batch_size: int
    queue_wait: float
    exec_time: float
    reason: DispatchReason

"""The exceptions of the batching package.

Every error a caller of :class:`~batching.DynamicBatcher` can see is one of these, except the
exception that ``batch_fn`` itself raised for an item, which is delivered to that item's caller
unchanged (the original instance, after bisection isolated it)::

    BatchingError                 root; also raised for an internal error of the batcher
    ├── QueueFull                 retryable: the queue is at its bound; carries ``retry_after``
    ├── ShuttingDown              retryable elsewhere: the batcher is draining or closed
    ├── DeadlineExceeded          the item's deadline passed before it ran; it never ran
    └── BatchContractError        misuse: ``batch_fn`` broke its contract (wrong length, not a
                                  sequence); a bug in the batch function, not in the item

``QueueFull`` and ``ShuttingDown`` are overload and lifecycle signals (the service answers them
with 503 and ``Retry-After``); ``DeadlineExceeded`` maps to 504; ``BatchContractError`` and a bare
``BatchingError`` are internal errors (500).
"""

from __future__ import annotations

__all__ = [
    "BatchContractError",
    "BatchingError",
    "DeadlineExceeded",
    "QueueFull",
    "ShuttingDown",
]


class BatchingError(Exception):
    """Root of the batching package's exceptions."""


class QueueFull(BatchingError):
    """The queue holds ``max_queue`` items already; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float, queue_depth: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.queue_depth = queue_depth


class ShuttingDown(BatchingError):
    """The batcher is draining or closed: it takes no new work and failed what it could not run."""


class DeadlineExceeded(BatchingError):
    """The item's deadline passed before its batch ran; it was dropped without running."""


class BatchContractError(BatchingError):
    """``batch_fn`` returned something other than one result per input, in a sequence."""

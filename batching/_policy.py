"""Small policies: valid settings, what counts as out-of-memory, how long to wait when refused."""

from __future__ import annotations

__all__ = ["RetryAfterEstimator", "check_settings", "default_is_oom"]


def default_is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` means the device ran out of memory.

    Recognises torch's ``OutOfMemoryError`` (``torch.OutOfMemoryError`` and
    ``torch.cuda.OutOfMemoryError``) by class name, so torch is never imported, Python's
    ``MemoryError``, and any error whose message says "out of memory" (CUDA, cuDNN, ROCm).
    """
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break error handling
        return False
    return "out of memory" in message.lower()


class RetryAfterEstimator:
    """Estimates how long a refused caller should wait: queue depth / recent items per second.

    The rate is an exponentially weighted average of each finished batch's items per second
    of wall time (dispatch to done, the thread hop included) times the number of batches that
    can run at once. Before any batch finished it answers ``fallback``; it always answers
    within ``[minimum, maximum]``.
    """

    def __init__(
        self,
        concurrency: int,
        *,
        fallback: float = 1.0,
        minimum: float = 0.05,
        maximum: float = 30.0,
        smoothing: float = 0.2,
    ) -> None:
        self._concurrency = concurrency
        self._fallback = fallback
        self._minimum = minimum
        self._maximum = maximum
        self._smoothing = smoothing
        self._rate: float | None = None

    @property
    def items_per_second(self) -> float | None:
        """The current estimate of throughput, or ``None`` before any batch finished."""
        return self._rate

    def record(self, items: int, seconds: float) -> None:
        """One batch of ``items`` took ``seconds`` from dispatch to done."""
        if items <= 0:
            return
        rate = items * self._concurrency / max(seconds, 1e-6)
        if self._rate is None:
            self._rate = rate
        else:
            self._rate += self._smoothing * (rate - self._rate)

    def retry_after(self, depth: int) -> float:
        """Seconds until a queue of ``depth`` items is likely to have room."""
        estimate = self._fallback if self._rate is None else depth / self._rate
        return min(self._maximum, max(self._minimum, estimate))


def check_settings(max_batch_size: int, max_wait: float, max_queue: int, concurrent: int) -> None:
    """Refuse settings that cannot work, with the reason."""
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
    if not 0 <= max_wait < float("inf"):
        raise ValueError(f"max_wait must be a finite number of seconds >= 0, not {max_wait}")
    if max_queue < 1:
        raise ValueError(f"max_queue must be at least 1, not {max_queue}")
    if concurrent < 1:
        raise ValueError(f"max_concurrent_batches must be at least 1, not {concurrent}")

"""When to try again, how long to wait first, and the budget that keeps retries from amplifying
an outage.

- Which errors: those whose ``retryable`` is set (see :mod:`clients.errors`); never anything else,
  so never ``asyncio.CancelledError``.
- How long: full-jitter exponential backoff, ``uniform(0, min(cap, base * 2**(n-1)))`` (the AWS
  Architecture Blog's "Exponential Backoff and Jitter"), and at least the server's ``Retry-After``.
- When to stop: after ``max_attempts`` tries, when the next try would start past the call's
  deadline (no sleeping past it), or when the shared :class:`RetryBudget` says no.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from clients.errors import ClientError, DeadlineExceeded

__all__ = ["Backoff", "RetryBudget", "RetryPolicy", "Try", "parse_retry_after"]

T = TypeVar("T")

logger = logging.getLogger("clients")

_MAX_EXPONENT = 62


class RetryBudget:
    """A token bucket shared by every call of a client, as gRPC retry throttling (gRFC A6).

    It starts full with ``max_tokens``. Each retryable failure takes one token, each success gives
    back ``token_ratio``; a retry is allowed only while more than half the tokens are left. When the
    service is down, every call fails and the bucket drains after ``max_tokens / 2`` failures: from
    then on each call makes one try, so the clients add no load beyond their own traffic. Successes
    refill it slowly (``max_tokens / 2 / token_ratio`` of them to refill from empty).

    A bucket must hold over two tokens per call that may be in flight at once
    (:meth:`for_concurrency`), else one short burst of failures (a backend killed under the calls
    in flight) drains it, and the calls caught in it fail without their one retry.

    Not thread-safe: share one budget only between clients on one event loop.
    """

    def __init__(self, max_tokens: float = 10.0, token_ratio: float = 0.1) -> None:
        if max_tokens <= 0 or token_ratio <= 0:
            raise ValueError("max_tokens and token_ratio must be positive")
        self.max_tokens = max_tokens
        self.token_ratio = token_ratio
        self._tokens = max_tokens

    @classmethod
    def for_concurrency(cls, concurrency: int, token_ratio: float = 0.1) -> RetryBudget:
        """A bucket in which every call in flight can fail at once and still retry: retries stop
        at half the tokens, so two tokens per call and two more; at least gRPC's usual 10."""
        return cls(max(10.0, 2.0 * (concurrency + 1)), token_ratio)

    @property
    def tokens(self) -> float:
        return self._tokens

    def record_failure(self) -> None:
        self._tokens = max(0.0, self._tokens - 1.0)

    def record_success(self) -> None:
        self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def allows_retry(self) -> bool:
        return self._tokens > self.max_tokens / 2

    def __repr__(self) -> str:
        return f"RetryBudget(tokens={self._tokens:g}/{self.max_tokens:g})"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Full-jitter exponential backoff: after try ``n``, wait below ``min(cap, base·2ⁿ⁻¹)``."""

    base: float = 0.2
    cap: float = 5.0

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0:
            raise ValueError("backoff base and cap must not be negative")

    def ceiling(self, attempt: int) -> float:
        """The largest wait after failed try number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, attempt: int, jitter: float) -> float:
        """The wait after failed try ``attempt``, for ``jitter`` uniform in [0, 1)."""
        return jitter * self.ceiling(attempt)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None.

    ``now`` is the wall-clock time (``time.time()``) an HTTP date is measured from; a date in the
    past, or a negative number, means no wait.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and exc.retryable


@dataclass(frozen=True, slots=True)
class Try:
    """One try of a call: the call's request id, the try's number (1-based) and the seconds left
    of the call's deadline when it starts."""

    request_id: str
    number: int
    remaining: float


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How one client retries its calls; :meth:`retrying` makes the loop for one call."""

    max_attempts: int
    backoff: Backoff
    budget: RetryBudget
    sleep: Callable[[float], Awaitable[None]]
    jitter: Callable[[], float]
    clock: Callable[[], float]

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def retrying(self, deadline: float) -> AsyncRetrying:
        """A fresh tenacity loop for one call that must end by ``deadline`` (on ``clock``).

        One per call: tenacity keeps its iteration state on the object.
        """

        def stop(state: RetryCallState) -> bool:
            return (
                state.attempt_number >= self.max_attempts
                or not self.budget.allows_retry()
                or self.clock() + state.upcoming_sleep >= deadline
            )

        return AsyncRetrying(
            retry=retry_if_exception(_is_retryable),
            wait=self._wait,
            stop=stop,
            sleep=self.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )

    async def run(self, request_id: str, deadline_s: float,
                  once: Callable[[Try], Awaitable[T]]) -> T:
        """One call, whatever its transport (HTTP, gRPC): ``once`` per try until one answers, a
        failure is not retryable or the retries stop; the budget is told of every outcome."""
        deadline = self.clock() + deadline_s
        answered: list[T] = []
        async for attempt in self.retrying(deadline):
            with attempt:
                number = attempt.retry_state.attempt_number
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise DeadlineExceeded(f"deadline passed before try {number}",
                                           request_id=request_id)
                try:
                    answer = await once(Try(request_id, number, remaining))
                except ClientError as exc:
                    exc.attempt = number
                    if exc.retryable:
                        self.budget.record_failure()
                    raise
                self.budget.record_success()
                answered.append(answer)
        return answered[-1]  # the loop ends with an answer or raises

    def _wait(self, state: RetryCallState) -> float:
        delay = self.backoff.delay(state.attempt_number, self.jitter())
        error = state.outcome.exception() if state.outcome is not None else None
        retry_after = error.retry_after if isinstance(error, ClientError) else None
        return delay if retry_after is None else max(delay, retry_after)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    logger.info(
        "try %d failed (%s); retrying in %.3fs", state.attempt_number, error, state.upcoming_sleep
    )

"""One request's tries at the backends, written once for the HTTP exchange and the WebSocket
handshake alike (as Envoy keeps one retry state whatever the protocol).

A :class:`RetryState` decides the next backend (not tried yet, within the deadline and
``max_retries``), charges every retry to the retry budget (waiting a moment for a slot, or
giving up when none comes), retries only errors that are ``retryable``, counts each try on its
backend and times it on the proxy's ticker (the per-try timeout), and words the answer once no
backend can take the request. What differs per transport stays with its owner (an
:class:`Attempter`): how a try reaches its backend and what becomes of the answer.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from loadbalancer.backend import Backend
from loadbalancer.errors import (
    DeadlineExceeded,
    NoHealthyBackend,
    Overloaded,
    RequestError,
    UpstreamError,
    UpstreamOverloaded,
)
from loadbalancer.ticker import INF, Timed

if TYPE_CHECKING:
    from loadbalancer.messages import Request
    from loadbalancer.proxy import Proxy

__all__ = ["DEADLINE_SLACK", "Attempter", "RetryState", "no_backend"]

DEADLINE_SLACK = 0.005  # a try with less time left than this cannot succeed


class Attempter(Timed, Protocol):
    """What a retry state drives: an exchange or a tunnel. Its timer is armed at each try's
    deadline; once a wait for a retry-budget slot ends, one of these is called."""

    def attempt(self) -> None:
        """Makes the next try (a slot came free)."""
        ...

    def fail(self, error: RequestError | UpstreamError) -> None:
        """Ends with ``error``: no slot came free."""
        ...


class _Finished:
    """The owner of a finished retry state: nothing left to time or try."""

    timer_at = INF

    def on_timer(self) -> None:
        pass

    def attempt(self) -> None:
        pass

    def fail(self, error: RequestError | UpstreamError) -> None:
        pass


FINISHED: Attempter = _Finished()


class RetryState:
    """The tries of one request: ``start``, then ``next`` for each try, ``failed`` or
    ``end_attempt`` when it ends, and ``finish`` when the request does."""

    __slots__ = (
        "active",
        "backend",
        "deadline",
        "key",
        "last",
        "owner",
        "proxy",
        "retrying",
        "sent_at",
        "tried",
        "try_deadline",
        "waiting",
    )

    def __init__(self, proxy: Proxy, owner: Attempter) -> None:
        self.proxy = proxy
        self.owner = owner
        self.active = False  # counted in the retry budget's active requests
        self.retrying = False  # holds a retry-budget slot, from the first retry to ``finish``
        self.tried: list[Backend] = []
        self.last: UpstreamError | None = None  # why the previous try failed
        self.key: bytes | None = None  # what a consistent-hash policy hashes (a stream id)
        self.backend: Backend | None = None  # the try in flight counts on it
        self.waiting: asyncio.Task[bool] | None = None  # for a retry-budget slot
        self.deadline = self.try_deadline = self.sent_at = 0.0

    def start(self, request: Request) -> None:
        """The request is admitted: its deadline and key are set and the budget grows with it."""
        self.begin(self.proxy.deadline_of(request), self.proxy.hash_key(request))

    def begin(self, deadline: float, key: bytes | None) -> None:
        """A request or call is admitted with this deadline and hash key (a gRPC call: from its
        ``grpc-timeout`` and metadata)."""
        self.deadline = deadline
        self.key = key
        self.active = True
        self.proxy.budget.enter()

    def next(self) -> Backend | RequestError | None:
        """The backend for the next try, already counted on it and timed; the error to end with
        when no try can be made; None while a retry waits for a budget slot (the owner's
        ``attempt`` or ``fail`` is called when the wait ends)."""
        proxy = self.proxy
        now = monotonic()
        if now + DEADLINE_SLACK >= self.deadline:
            return DeadlineExceeded("the deadline passed before an answer started")
        backend = proxy.cluster.choose(now, self.tried, key=self.key)
        if backend is None or len(self.tried) > proxy.max_retries:
            return no_backend(self.last, self.tried)
        if self.tried and not self.retrying:
            if not proxy.budget.try_acquire():
                self._wait_for_budget()
                return None
            self.retrying = True
        if self.last is not None:
            proxy.stats.count_retry(self.last.kind)
        self.tried.append(backend)
        self.backend = backend
        backend.inflight += 1
        backend.requests += 1
        self.sent_at = now
        self.try_deadline = min(self.deadline, now + proxy.per_try)
        proxy.ticker.arm(self.owner, self.try_deadline)
        return backend

    def can_retry(self, now: float) -> bool:
        """Whether another backend could take the request now, none backing off included (a
        503 answer is passed on rather than retried onto a backend that is shedding load)."""
        if len(self.tried) > self.proxy.max_retries or now >= self.deadline:
            return False
        return self.proxy.cluster.choose(now, self.tried, allow_backoff=False, key=self.key) is not None

    def failed(self, error: UpstreamError) -> bool:
        """The try failed before its answer started: it ends, its backend hears of it, and the
        answer is whether ``error`` is worth another backend (the owner then calls ``next``)."""
        backend = self.backend
        self.end_attempt()
        if backend is not None:
            self.proxy.cluster.report_failure(backend, error.kind, monotonic(), outlier=error.outlier)
        if not error.retryable:
            return False
        self.last = error
        return True

    def end_attempt(self) -> None:
        """The try in flight no longer counts on its backend; a retiring one is removed once idle."""
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.inflight -= 1
            if backend.retiring and backend.inflight == 0:
                self.proxy.cluster.idle(backend)  # drained: removed now

    def finish(self) -> None:
        """No more tries (answered, failed or cut): a wait for a slot is dropped, the slot held
        is given back and the budget shrinks again. Idempotent."""
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.cancel()
        self.owner = FINISHED  # no cycle left for the garbage collector: freed with its owner
        budget = self.proxy.budget
        if self.retrying:
            self.retrying = False
            budget.release()
        if self.active:
            self.active = False
            budget.leave()

    # -- the retry budget ----------------------------------------------------------------------
    def _wait_for_budget(self) -> None:
        self.proxy.ticker.disarm(self.owner)  # the last try's timeout is moot: it has ended
        task = self.proxy.loop.create_task(self.proxy.budget.acquire(self.deadline))
        self.waiting = task
        task.add_done_callback(self._budget_answered)

    def _budget_answered(self, task: asyncio.Task[bool]) -> None:
        granted = not task.cancelled() and task.exception() is None and task.result()
        if task is not self.waiting:  # given up on meanwhile: a slot granted goes back
            if granted:
                self.proxy.budget.release()
            return
        self.waiting = None
        if granted:
            self.retrying = True
            return self.owner.attempt()
        self.proxy.stats.budget_exhausted += 1
        self.owner.fail(no_backend(self.last, self.tried, "retry budget exhausted"))


def no_backend(
    last: UpstreamError | None, tried: list[Backend], why: str = ""
) -> NoHealthyBackend | Overloaded:
    """The error once no backend can take the request: 503 + Retry-After when the last one
    was shedding load, 502 no_healthy_backend otherwise."""
    reason = f" ({why})" if why else ""
    if isinstance(last, UpstreamOverloaded):
        error = Overloaded(f"every backend is overloaded{reason}")
        error.retry_after = max(1, round(last.retry_after))
        return error
    detail = f"; last error: {last}" if last is not None else ""
    tries = f" after {len(tried)} attempt(s)" if tried else ""
    return NoHealthyBackend(f"no backend could take the request{tries}{reason}{detail}")

"""Forwarding: one :class:`Exchange` per request, a small state machine driven by the parser
callbacks of both connections (no task, future or coroutine per request on the fast path).

Retried, on a different backend: failed to connect, reset before the answer started, per-try
timeout, 503 with Retry-After while another backend can take it, and a backend that dies in the
middle of an answer none of which has reached the client yet: an answer with a Content-Length up
to ``HOLD_MAX_BYTES`` (a detection's JSON) is held until it is complete, since a server writes
its head and its body apart and can die in between. Never retried: anything once bytes of the
answer have gone to the client (longer or streamed answers go as they come).

Deadlines are ``time.monotonic()`` seconds measured from the request's arrival; the remaining
budget is forwarded in ``X-Request-Timeout-Ms``.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from math import inf as INF
from time import monotonic
from typing import Protocol

from loadbalancer.backend import Backend
from loadbalancer.errors import (
    ConnectFailed,
    DeadlineExceeded,
    NoHealthyBackend,
    Overloaded,
    RequestError,
    ResponseAborted,
    StaleConnection,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamReset,
    UpstreamTimeout,
)
from loadbalancer.messages import Request, response_head, upstream_request
from loadbalancer.proxy import Proxy
from loadbalancer.upstream import Framing, ResponseHead, UpstreamConnection
from wire import errors as codes

__all__ = ["ClientSide", "Exchange", "Phase"]

log = logging.getLogger("loadbalancer.exchange")
DEADLINE_SLACK = 0.005  # a try with less time left than this cannot succeed
HOLD_MAX_BYTES = 65_536  # answers with a Content-Length up to this reach the client whole or not at all


class ClientSide(Protocol):
    """The client connection, as an exchange needs it."""

    closing: bool

    def start(self, head: bytes, *, chunked: bool, close: bool) -> None: ...

    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def flush(self) -> None: ...

    def retract(self) -> None: ...

    def bind_upstream(self, conn: UpstreamConnection | None) -> None: ...

    def answer_error(self, request: Request, error: Exception, status: int, code: str) -> None: ...

    def abort(self) -> None: ...

    def exchange_done(self, exchange: Exchange) -> None: ...


class Phase(Enum):
    NEW = "new"
    ATTEMPT = "attempt"  # connecting, or waiting for an answer's head
    WAIT = "wait"  # waiting for a retry-budget slot
    STREAM = "stream"  # the answer is streaming back: no retry from here
    DONE = "done"


class Exchange:
    """One request from arrival to the end of its answer; every path ends in ``_finish``."""

    __slots__ = (
        "backend",
        "client",
        "conn",
        "deadline",
        "fresh",
        "held",
        "key",
        "last",
        "pending",
        "phase",
        "proxy",
        "request",
        "retrying",
        "sent_at",
        "status",
        "timer_at",
        "tried",
        "try_deadline",
    )

    def __init__(self, proxy: Proxy, request: Request, client: ClientSide) -> None:
        self.proxy = proxy
        self.request = request
        self.client = client
        self.phase = Phase.NEW
        self.status = 0
        self.tried: list[Backend] = []
        self.last: UpstreamError | None = None
        self.retrying = False
        self.fresh = False
        self.held = False  # the answer so far is buffered, none of it sent: still retryable
        self.key: bytes | None = None  # what a consistent-hash policy hashes (a stream id)
        self.backend: Backend | None = None  # the attempt in flight counts on it
        self.conn: UpstreamConnection | None = None
        self.pending: asyncio.Task[UpstreamConnection] | asyncio.Task[bool] | None = None
        self.timer_at = INF  # when on_timer is due; the proxy's ticker checks
        self.deadline = self.try_deadline = self.sent_at = 0.0

    # -- start and attempts --------------------------------------------------------------------
    def start(self) -> None:
        proxy, request = self.proxy, self.request
        if proxy.stats.active >= proxy.max_inflight:
            self.phase = Phase.DONE
            error = Overloaded("the load balancer has too many requests in flight")
            self.client.answer_error(request, error, error.status, error.code)
            self.status = error.status
            self.client.exchange_done(self)
            return
        proxy.stats.active += 1
        proxy.budget.enter()
        self.deadline = proxy.deadline_of(request)
        self.key = proxy.hash_key(request)
        self._attempt()

    def _attempt(self) -> None:
        """Chooses a backend not tried yet and sends the request to it."""
        proxy = self.proxy
        now = monotonic()
        if now + DEADLINE_SLACK >= self.deadline:
            return self._fail(DeadlineExceeded("the deadline passed before an answer started"))
        backend = proxy.cluster.choose(now, self.tried, key=self.key)
        if backend is None or len(self.tried) > proxy.max_retries:
            return self._fail(_no_backend(self.last, self.tried))
        if self.tried and not self.retrying:
            if not proxy.budget.try_acquire():
                return self._wait_for_budget()
            self.retrying = True
        if self.last is not None:
            proxy.stats.count_retry(self.last.kind)
        self.phase = Phase.ATTEMPT
        self.tried.append(backend)
        self.backend = backend
        backend.inflight += 1
        backend.requests += 1
        self.sent_at = now
        self.try_deadline = min(self.deadline, now + proxy.per_try)
        self._arm(self.try_deadline)
        assert backend.pool is not None
        conn = backend.pool.take()
        if conn is None:
            self._connect(backend, fresh=False)
        else:
            self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        assert self.backend is not None
        self.conn = conn
        # the backend gets this try's budget (as Envoy does), so work the balancer will give up
        # on is dropped by the service instead of computed for nobody
        remaining_ms = max(int((self.try_deadline - monotonic()) * 1000.0), 1)
        data = upstream_request(self.request, remaining_ms, self.backend.id_bytes)
        conn.send(data, self, head_only=self.request.method == b"HEAD")

    def _connect(self, backend: Backend, *, fresh: bool) -> None:
        """The slow path: a new connection, or a wait for a free one (a task)."""
        assert backend.pool is not None
        acquire = backend.pool.acquire(self.try_deadline, fresh=fresh)
        task = self.proxy.loop.create_task(acquire)
        self.pending = task
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[UpstreamConnection]) -> None:
        if task is not self.pending:  # given up on meanwhile: the connection goes to the pool
            if not task.cancelled() and task.exception() is None:
                task.result().pool.release(task.result(), reuse=True)
            return
        self.pending = None
        if task.cancelled():
            return self._attempt_failed(ConnectFailed("connect cancelled"))
        error = task.exception()
        if error is None:
            return self._send(task.result())
        if not isinstance(error, UpstreamError):
            error = ConnectFailed(f"cannot connect: {error!r}")
        self._attempt_failed(error)

    def _wait_for_budget(self) -> None:
        self.phase = Phase.WAIT
        task = self.proxy.loop.create_task(self.proxy.budget.acquire(self.deadline))
        self.pending = task
        task.add_done_callback(self._budget_answered)

    def _budget_answered(self, task: asyncio.Task[bool]) -> None:
        granted = not task.cancelled() and task.exception() is None and task.result()
        if task is not self.pending:
            if granted:
                self.proxy.budget.release()
            return
        self.pending = None
        if granted:
            self.retrying = True
            return self._attempt()
        self.proxy.stats.budget_exhausted += 1
        self._fail(_no_backend(self.last, self.tried, "retry budget exhausted"))

    def _attempt_failed(self, error: UpstreamError) -> None:
        """The attempt failed before its answer started: same backend once for a stale
        keep-alive connection, else count it and retry elsewhere (or give up)."""
        backend = self.backend
        self._drop_conn()
        if backend is None:
            return
        if isinstance(error, StaleConnection) and not self.fresh:
            self.fresh = True
            return self._connect(backend, fresh=True)
        self._end_attempt()
        self.proxy.cluster.report_failure(backend, error.kind, monotonic(), outlier=error.outlier)
        if not error.retryable:
            return self._fail(error)
        self.last = error
        self._attempt()

    # -- Receiver: the upstream connection's events --------------------------------------------
    def upstream_head(self, head: ResponseHead) -> None:
        backend = self.backend
        assert backend is not None and self.conn is not None
        now = monotonic()
        backend.observe_latency(now - self.sent_at, now)
        self.proxy.head_latency.record(now - self.sent_at)
        status = head.status
        if status == 503 and head.retry_after is not None:
            self.proxy.cluster.back_off(backend, head.retry_after, now)
            backend.record_error("overloaded")
            if self._can_retry(now):
                self._drop_conn()
                self._end_attempt()
                self.last = UpstreamOverloaded(f"{backend.id} answered 503", head.retry_after)
                return self._attempt()
        elif status >= 500:
            self.proxy.cluster.report_failure(backend, "5xx", now, outlier=True)
        else:
            backend.record_success()
        self._stream(head, backend)

    def _stream(self, head: ResponseHead, backend: Backend) -> None:
        self.phase = Phase.STREAM
        self.held = head.framing is Framing.LENGTH and head.content_length <= HOLD_MAX_BYTES
        self.status = head.status
        request, client = self.request, self.client
        streamed = head.framing is Framing.CHUNKED or head.framing is Framing.CLOSE
        close = client.closing or not request.keep_alive or (streamed and not request.http11)
        data = response_head(
            head, upstream=backend.id_bytes, request_id=request.request_id, http11=request.http11, close=close
        )
        client.start(data, chunked=streamed and request.http11, close=close)
        client.bind_upstream(self.conn)

    def upstream_body(self, data: bytes) -> None:
        self.client.body(data)

    def upstream_complete(self) -> None:
        conn, backend = self.conn, self.backend
        self.conn = None
        self.client.end()
        self.client.bind_upstream(None)
        if conn is not None and backend is not None and backend.pool is not None:
            backend.pool.release(conn, reuse=True)
        self._end_attempt()
        self._finish()

    def upstream_failed(self, error: UpstreamError) -> None:
        self.conn = None  # the connection is gone already
        if self._retract() and isinstance(error, ResponseAborted):
            error = UpstreamReset(f"{error}, before any of the answer reached the client")
        if self.phase is not Phase.STREAM:
            return self._attempt_failed(error)
        backend = self.backend
        self._end_attempt()
        if backend is not None:
            self.proxy.cluster.report_failure(backend, error.kind, monotonic(), outlier=True)
        self._fail(error)

    def flush(self) -> None:
        if not self.held:  # a held answer is written whole, when the exchange is done
            self.client.flush()

    def _retract(self) -> bool:
        """Takes back a held answer (none of it was sent): the try failed before its answer."""
        if self.phase is not Phase.STREAM or not self.held:
            return False
        self.client.retract()
        self.phase = Phase.ATTEMPT
        self.held = False
        self.status = 0
        return True

    # -- time ----------------------------------------------------------------------------------
    def _arm(self, when: float) -> None:
        if self.timer_at == INF:
            self.proxy.watch(self)
        self.timer_at = when

    def on_timer(self) -> None:
        """Called by the proxy's ticker once ``timer_at`` has passed."""
        self.timer_at = INF
        self.proxy.unwatch(self)
        if self.phase is Phase.STREAM:
            if monotonic() < self.deadline:
                return self._arm(self.deadline)  # past the per-try timeout: now the deadline
            self._drop_conn()
            self._end_attempt()
            return self._fail(ResponseAborted("the deadline passed while the answer streamed"))
        if self.phase is Phase.ATTEMPT:
            pending, self.pending = self.pending, None
            if pending is not None:
                pending.cancel()
            self._attempt_failed(UpstreamTimeout("no answer within the per-try timeout"))

    # -- endings -------------------------------------------------------------------------------
    def cancel(self) -> None:
        """The client went away: stop whatever is in flight."""
        if self.phase is Phase.DONE:
            return
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()
        self._drop_conn()
        self._end_attempt()
        self.status = 499  # nginx's "client closed request"
        self._finish()

    def _can_retry(self, now: float) -> bool:
        if len(self.tried) > self.proxy.max_retries or now >= self.deadline:
            return False
        return self.proxy.cluster.choose(now, self.tried, allow_backoff=False, key=self.key) is not None

    def _drop_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self.client.bind_upstream(None)

    def _end_attempt(self) -> None:
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.inflight -= 1
            if backend.retiring and backend.inflight == 0:
                self.proxy.cluster.idle(backend)  # drained: removed now

    def _fail(self, error: RequestError | UpstreamError) -> None:
        self._retract()
        if self.phase is Phase.STREAM:
            self.client.abort()  # an answer has begun: all we can do is cut it
            self.status = self.status or 502
        else:
            status = error.status if isinstance(error, RequestError) else 502
            code = error.code if isinstance(error, RequestError) else codes.BAD_GATEWAY.code
            self.client.answer_error(self.request, error, status, code)
            self.status = status
        log.warning(
            "request failed",
            extra={
                "request_id": self.request.request_id.decode("latin-1"),
                "status": self.status,
                "attempts": len(self.tried),
                "error": str(error),
            },
        )
        self._finish()

    def _finish(self) -> None:
        if self.phase is Phase.DONE:
            return
        self.phase = Phase.DONE
        self.timer_at = INF
        self.proxy.unwatch(self)
        proxy = self.proxy
        if self.retrying:
            proxy.budget.release()
        proxy.stats.active -= 1
        proxy.budget.leave()
        if proxy.idle is not None and proxy.stats.active == 0:
            proxy.idle.set()
        self.client.exchange_done(self)


def _no_backend(
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

"""Forwarding: one :class:`Exchange` per request, a small state machine driven by the parser
callbacks of both connections (no task, future or coroutine per request on the fast path).

Retried, on a different backend: failed to connect, reset before the answer started, per-try
timeout, 503 with Retry-After while another backend can take it, and a backend that dies in the
middle of an answer none of which has reached the client yet: an answer with a Content-Length up
to ``HOLD_MAX_BYTES`` (a detection's JSON) is held until it is complete, since a server writes
its head and its body apart and can die in between. Never retried: anything once bytes of the
answer have gone to the client (longer or streamed answers go as they come).

Deadlines are ``time.monotonic()`` seconds measured from the request's arrival; the remaining
budget is forwarded in ``X-Request-Timeout-Ms``. Choosing, charging and timing the tries is the
:class:`~loadbalancer.retry.RetryState`'s, which the WebSocket handshake shares.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from time import monotonic
from typing import Protocol

from loadbalancer.backend import Backend
from loadbalancer.errors import (
    ConnectFailed,
    Overloaded,
    RequestError,
    ResponseAborted,
    StaleConnection,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamReset,
    UpstreamTimeout,
    answer_of,
)
from loadbalancer.messages import Request, upstream_request
from loadbalancer.proxy import Proxy
from loadbalancer.retry import RetryState
from loadbalancer.ticker import INF
from loadbalancer.upstream import Framing, ResponseHead, UpstreamConnection

__all__ = ["ClientSide", "Exchange", "Phase"]

log = logging.getLogger("loadbalancer.exchange")
HOLD_MAX_BYTES = 65_536  # answers with a Content-Length up to this reach the client whole or not at all


class ClientSide(Protocol):
    """The client connection, as an exchange needs it."""

    closing: bool

    def start_answer(self, head: ResponseHead, upstream: bytes, request: Request) -> None:
        """The answer begins: ``head`` from backend ``upstream``, for ``request``; each front
        writes it in its own protocol."""

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
        "client",
        "conn",
        "fresh",
        "held",
        "pending",
        "phase",
        "proxy",
        "request",
        "retry",
        "status",
        "timer_at",
    )

    def __init__(self, proxy: Proxy, request: Request, client: ClientSide) -> None:
        self.proxy = proxy
        self.request = request
        self.client = client
        self.phase = Phase.NEW
        self.status = 0
        self.retry = RetryState(proxy, self)
        self.fresh = False
        self.held = False  # the answer so far is buffered, none of it sent: still retryable
        self.conn: UpstreamConnection | None = None
        self.pending: asyncio.Task[UpstreamConnection] | None = None
        self.timer_at = INF  # when on_timer is due; the proxy's ticker checks

    @property
    def tried(self) -> list[Backend]:
        """The backends tried so far, in order."""
        return self.retry.tried

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
        self.retry.start(request)
        self.attempt()

    def attempt(self) -> None:
        """Sends the request to the next backend the retry state gives."""
        backend = self.retry.next()
        if backend is None:  # a retry waits for a budget slot: attempt or fail comes next
            self.phase = Phase.WAIT
            return
        if isinstance(backend, RequestError):
            return self.fail(backend)
        self.phase = Phase.ATTEMPT
        assert backend.pool is not None
        conn = backend.pool.take()
        if conn is None:
            self._connect(backend, fresh=False)
        else:
            self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        backend = self.retry.backend
        assert backend is not None
        self.conn = conn
        # the backend gets this try's budget (as Envoy does), so work the balancer will give up
        # on is dropped by the service instead of computed for nobody
        remaining_ms = max(int((self.retry.try_deadline - monotonic()) * 1000.0), 1)
        data = upstream_request(self.request, remaining_ms, backend.id_bytes)
        conn.send(data, self, head_only=self.request.method == b"HEAD")

    def _connect(self, backend: Backend, *, fresh: bool) -> None:
        """The slow path: a new connection, or a wait for a free one (a task)."""
        assert backend.pool is not None
        acquire = backend.pool.acquire(self.retry.try_deadline, fresh=fresh)
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

    def _attempt_failed(self, error: UpstreamError) -> None:
        """The attempt failed before its answer started: same backend once for a stale
        keep-alive connection, else count it and retry elsewhere (or give up)."""
        backend = self.retry.backend
        self._drop_conn()
        if backend is None:
            return
        if isinstance(error, StaleConnection) and not self.fresh:
            self.fresh = True
            return self._connect(backend, fresh=True)
        if self.retry.failed(error):
            return self.attempt()
        self.fail(error)

    # -- Receiver: the upstream connection's events --------------------------------------------
    def upstream_head(self, head: ResponseHead) -> None:
        backend = self.retry.backend
        assert backend is not None and self.conn is not None
        now = monotonic()
        backend.observe_latency(now - self.retry.sent_at, now)
        self.proxy.head_latency.record(now - self.retry.sent_at)
        status = head.status
        if status == 503 and head.retry_after is not None:
            self.proxy.cluster.back_off(backend, head.retry_after, now)
            overloaded = UpstreamOverloaded(f"{backend.id} answered 503", head.retry_after)
            if self.retry.can_retry(now):
                self._drop_conn()
                self.retry.failed(overloaded)  # counted as the backend's error, not an outlier
                return self.attempt()
            backend.record_error(overloaded.kind)
        elif status >= 500:
            self.proxy.cluster.report_failure(backend, "5xx", now, outlier=True)
        else:
            backend.record_success()
        self._stream(head, backend)

    def _stream(self, head: ResponseHead, backend: Backend) -> None:
        self.phase = Phase.STREAM
        self.held = head.framing is Framing.LENGTH and head.content_length <= HOLD_MAX_BYTES
        self.status = head.status
        client = self.client
        client.start_answer(head, backend.id_bytes, self.request)
        client.bind_upstream(self.conn)

    def upstream_body(self, data: bytes) -> None:
        self.client.body(data)

    def upstream_complete(self) -> None:
        conn, backend = self.conn, self.retry.backend
        self.conn = None
        self.client.end()
        self.client.bind_upstream(None)
        if conn is not None and backend is not None and backend.pool is not None:
            backend.pool.release(conn, reuse=True)
        self.retry.end_attempt()
        self._finish()

    def upstream_failed(self, error: UpstreamError) -> None:
        self.conn = None  # the connection is gone already
        if self._retract() and isinstance(error, ResponseAborted):
            error = UpstreamReset(f"{error}, before any of the answer reached the client")
        if self.phase is not Phase.STREAM:
            return self._attempt_failed(error)
        backend = self.retry.backend
        self.retry.end_attempt()
        if backend is not None:
            self.proxy.cluster.report_failure(backend, error.kind, monotonic(), outlier=True)
        self.fail(error)

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
    def on_timer(self) -> None:
        """Called by the proxy's ticker once ``timer_at`` (the try's deadline) has passed."""
        if self.phase is Phase.STREAM:
            deadline = self.retry.deadline
            if monotonic() < deadline:  # past the per-try timeout: now the deadline
                return self.proxy.ticker.arm(self, deadline)
            self._drop_conn()
            self.retry.end_attempt()
            return self.fail(ResponseAborted("the deadline passed while the answer streamed"))
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
        self.retry.end_attempt()
        self.status = 499  # nginx's "client closed request"
        self._finish()

    def _drop_conn(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        self.client.bind_upstream(None)

    def fail(self, error: RequestError | UpstreamError) -> None:
        """Ends with ``error``: an answer from the balancer, or a cut if one has begun."""
        self._retract()
        if self.phase is Phase.STREAM:
            self.client.abort()  # an answer has begun: all we can do is cut it
            self.status = self.status or 502
        else:
            status, code = answer_of(error)
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
        proxy = self.proxy
        proxy.ticker.disarm(self)
        self.retry.finish()
        proxy.stats.active -= 1
        if proxy.idle is not None and proxy.stats.active == 0:
            proxy.idle.set()
        self.client.exchange_done(self)

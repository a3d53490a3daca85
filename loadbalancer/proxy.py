"""Forwarding one request: pick a backend, send, retry elsewhere on a retryable failure, then
stream the answer back. Deadlines are ``time.monotonic()`` seconds from the request's arrival.

Retried: failed to connect, reset before the answer started, per-try timeout, 503 with
Retry-After (while another backend can take it). Never retried: anything once the answer has
started to stream back.
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from loadbalancer.backend import Backend
from loadbalancer.budget import RetryBudget
from loadbalancer.cluster import Cluster
from loadbalancer.errors import (
    DeadlineExceeded,
    NoHealthyBackend,
    Overloaded,
    StaleConnection,
    UpstreamError,
    UpstreamOverloaded,
)
from loadbalancer.stats import ProxyStats
from loadbalancer.upstream import Framing, ResponseHead, Sink, UpstreamConnection
from loadbalancer.wire import Request, response_head, upstream_request

if TYPE_CHECKING:
    from loadbalancer.settings import LBSettings

__all__ = ["Downstream", "Proxy"]


class Downstream(Sink, Protocol):
    """The client side of one exchange, as the proxy needs it."""

    closing: bool

    def start(self, head: bytes, *, chunked: bool, close: bool) -> None: ...


class Proxy:
    """Shared by every client connection: the cluster, the retry budget and the totals."""

    def __init__(self, settings: LBSettings, cluster: Cluster, stats: ProxyStats) -> None:
        self.settings = settings
        self.cluster = cluster
        self.stats = stats
        self.budget = RetryBudget(
            settings.retry_budget_percent, settings.retry_budget_min, settings.retry_budget_wait
        )
        self.loop = asyncio.get_running_loop()
        self._per_try = settings.per_try_timeout
        self._default_timeout = settings.request_timeout
        self._max_timeout = settings.max_request_timeout
        self._max_inflight = settings.max_inflight
        self._max_retries = settings.max_retries
        self._idle: asyncio.Event | None = None

    async def forward(self, request: Request, out: Downstream) -> tuple[int, Backend | None]:
        """Proxies ``request``; returns the status sent and the backend that answered.

        Raises :class:`RequestError` (the balancer answers) or :class:`UpstreamError` that is
        not retryable; either way, ``out`` has not been started unless it is ResponseAborted.
        """
        stats = self.stats
        if stats.active >= self._max_inflight:
            raise Overloaded("the load balancer has too many requests in flight")
        stats.active += 1
        self.budget.enter()
        try:
            return await self._forward(request, out)
        finally:
            stats.active -= 1
            self.budget.leave()
            if self._idle is not None and stats.active == 0:
                self._idle.set()

    async def wait_idle(self, within: float) -> bool:
        """Waits until no request is in flight (graceful shutdown); False on timeout."""
        if self.stats.active == 0:
            return True
        self._idle = asyncio.Event()
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _deadline(self, request: Request) -> float:
        timeout = self._default_timeout
        if request.timeout_ms is not None:
            timeout = min(max(request.timeout_ms / 1000.0, 0.0), self._max_timeout)
        return request.started + timeout

    async def _forward(self, request: Request, out: Downstream) -> tuple[int, Backend | None]:
        deadline = self._deadline(request)
        tried: list[Backend] = []
        last: UpstreamError | None = None
        retrying = False
        try:
            while True:
                now = monotonic()
                if now >= deadline:
                    raise DeadlineExceeded("the request's deadline passed before an answer")
                backend = self.cluster.choose(now, tried)
                if backend is None or len(tried) > self._max_retries:
                    raise _no_backend(last, tried)
                if tried and not retrying:
                    if not await self.budget.acquire(deadline):
                        self.stats.budget_exhausted += 1
                        raise _no_backend(last, tried, "retry budget exhausted")
                    retrying = True
                    continue  # choose again: the world may have changed while waiting
                if last is not None:
                    self.stats.count_retry(last.kind)
                tried.append(backend)
                try:
                    status = await self._attempt(backend, request, out, deadline, tried)
                    return status, backend
                except UpstreamError as exc:
                    if not exc.retryable:
                        raise
                    last = exc
        finally:
            if retrying:
                self.budget.release()

    async def _attempt(
        self,
        backend: Backend,
        request: Request,
        out: Downstream,
        deadline: float,
        tried: list[Backend],
    ) -> int:
        """One try at one backend; raises UpstreamError if it failed before the answer began."""
        cluster = self.cluster
        assert backend.pool is not None
        backend.inflight += 1
        backend.requests += 1
        start = monotonic()
        conn: UpstreamConnection | None = None
        reuse = False
        try:
            conn, head = await self._exchange(backend, request, deadline)
            now = monotonic()
            backend.observe_latency(now - start, now)
            if head.status == 503 and head.retry_after is not None:
                backend.back_off(head.retry_after, now)
                backend.record_error("overloaded")
                if self._can_retry(tried, deadline, now):
                    raise UpstreamOverloaded(f"{backend.id} answered 503", head.retry_after)
            elif head.status >= 500:
                cluster.report_failure(backend, "5xx", now, outlier=True)
            else:
                backend.record_success()
            await self._relay(backend, conn, head, request, out, deadline)
            reuse = True
            return head.status
        except UpstreamError as exc:
            if not isinstance(exc, UpstreamOverloaded):
                cluster.report_failure(backend, exc.kind, monotonic(), outlier=exc.outlier)
            raise
        finally:
            backend.inflight -= 1
            if conn is not None:
                backend.pool.release(conn, reuse=reuse)

    def _can_retry(self, tried: list[Backend], deadline: float, now: float) -> bool:
        if len(tried) > self._max_retries or now >= deadline:
            return False
        return self.cluster.choose(now, tried, allow_backoff=False) is not None

    async def _exchange(
        self, backend: Backend, request: Request, deadline: float
    ) -> tuple[UpstreamConnection, ResponseHead]:
        """Sends the request, returns the answer's head; a stale keep-alive connection is
        replaced by a fresh one to the same backend, once."""
        loop = self.loop
        pool = backend.pool
        assert pool is not None
        try_deadline = min(deadline, monotonic() + self._per_try)
        fresh = False
        while True:
            conn = await pool.acquire(try_deadline, fresh=fresh)
            remaining_ms = max(int((deadline - monotonic()) * 1000.0), 1)
            data = upstream_request(request, remaining_ms, backend.id_bytes)
            head_future = conn.send(data, head_only=request.method == b"HEAD")
            timer = loop.call_at(try_deadline, conn.time_out)
            try:
                return conn, await head_future
            except StaleConnection:
                fresh = True
            except BaseException:
                conn.abort()
                raise
            finally:
                timer.cancel()

    async def _relay(
        self,
        backend: Backend,
        conn: UpstreamConnection,
        head: ResponseHead,
        request: Request,
        out: Downstream,
        deadline: float,
    ) -> None:
        streamed = head.framing in (Framing.CHUNKED, Framing.CLOSE)
        close = out.closing or not request.keep_alive or (streamed and not request.http11)
        out.start(
            response_head(
                head,
                upstream=backend.id_bytes,
                request_id=request.request_id,
                http11=request.http11,
                close=close,
            ),
            chunked=streamed and request.http11,
            close=close,
        )
        timer = self.loop.call_at(deadline, conn.expire)
        try:
            await conn.attach(out)
        finally:
            timer.cancel()


def _no_backend(
    last: UpstreamError | None, tried: list[Backend], why: str = ""
) -> NoHealthyBackend | Overloaded:
    """The error once no backend can take the request: 503 + Retry-After when the last one
    was shedding load, 502 no_healthy_backend otherwise."""
    if isinstance(last, UpstreamOverloaded):
        error = Overloaded(f"every backend is overloaded{f' ({why})' if why else ''}")
        error.retry_after = max(1, round(last.retry_after))
        return error
    detail = f"; last error: {last}" if last is not None else ""
    tries = f" after {len(tried)} attempt(s)" if tried else ""
    reason = f" ({why})" if why else ""
    return NoHealthyBackend(f"no backend could take the request{tries}{reason}{detail}")

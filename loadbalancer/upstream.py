"""Connections to one backend: an asyncio Protocol parsing answers with httptools, and a
keep-alive pool with a connection limit.

One request at a time per connection. The answer's head resolves a future (``send``); its body is
buffered until the proxy attaches a :class:`Sink` (``attach``), then handed over as it arrives,
flushed once per read so that a small answer leaves in one write.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from time import monotonic
from typing import Protocol, cast

import httptools

from loadbalancer.errors import (
    ConnectFailed,
    PoolExhausted,
    ResponseAborted,
    StaleConnection,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReset,
    UpstreamTimeout,
)

__all__ = ["Framing", "ResponseHead", "Sink", "UpstreamConnection", "UpstreamPool"]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
        b"content-length",
    }
)
MAX_PENDING_BODY = 1 << 18  # bytes read ahead before the proxy attaches a sink


class Framing(IntEnum):
    NONE = 0  # no body: HEAD, 204, 304
    LENGTH = 1
    CHUNKED = 2
    CLOSE = 3  # until the connection closes


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # end-to-end headers only
    framing: Framing
    content_length: int
    retry_after: float | None
    has_request_id: bool


class Sink(Protocol):
    """Where an answer's body goes (the client connection)."""

    def body(self, data: bytes) -> None: ...

    def end(self) -> None: ...

    def flush(self) -> None: ...

    def bind_upstream(self, conn: UpstreamConnection | None) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.pooled = True  # counts against the pool's limit
        self.reused = False
        self.idle_since = 0.0
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[ResponseHead] | None = None
        self._done: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._reset_message(head_only=False)

    def _reset_message(self, *, head_only: bool) -> None:
        self._head_only = head_only
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._length = -1
        self._chunked = False
        self._retry_after: float | None = None
        self._has_request_id = False
        self._framing = Framing.NONE
        self._received = False
        self._complete = False
        self._error: UpstreamError | None = None

    # -- used by the proxy ---------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.pooled

    def send(self, data: bytes, *, head_only: bool = False) -> asyncio.Future[ResponseHead]:
        """Writes a whole request; the future resolves with the answer's head."""
        assert self.transport is not None
        self._reset_message(head_only=head_only)
        self._head = self.pool.loop.create_future()
        self._done = None
        self.transport.write(data)
        return self._head

    def attach(self, sink: Sink) -> asyncio.Future[None]:
        """Streams the body into ``sink`` from now on; resolves when the answer is complete."""
        self._sink = sink
        sink.bind_upstream(self)
        done = self._done = self.pool.loop.create_future()
        for chunk in self._pending:
            sink.body(chunk)
        self._pending.clear()
        if self._pending_bytes > MAX_PENDING_BODY and self.transport is not None:
            self.transport.resume_reading()
        self._pending_bytes = 0
        if self._complete:
            sink.end()
            done.set_result(None)
        elif self._error is not None:
            done.set_exception(self._error)
        sink.flush()
        return done

    def detach(self) -> None:
        if self._sink is not None:
            self._sink.bind_upstream(None)
        self._sink = None

    def time_out(self) -> None:
        """The per-try timer: fails a pending head, and the connection with it."""
        if self._head is not None and not self._head.done():
            self._head.set_exception(UpstreamTimeout("no answer within the per-try timeout"))
            self.abort()

    def expire(self) -> None:
        """The request's deadline passed while the body streamed."""
        if self._done is not None and not self._done.done():
            self._done.set_exception(ResponseAborted("deadline passed while streaming"))
            self.abort()

    def abort(self) -> None:
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"bad answer from {self.pool.address}: {exc}"))
            self.abort()
        if self._sink is not None:
            self._sink.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if self._head is not None and not self._head.done():
            stale = self.reused and not self._received
            cls = StaleConnection if stale else UpstreamReset
            self._head.set_exception(cls(f"{self.pool.address} closed the connection: {exc}"))
        elif self._head is not None and not self._complete:
            if self._framing is Framing.CLOSE and self._error is None:
                self.on_message_complete()
                if self._sink is not None:
                    self._sink.flush()
            else:
                self._fail(ResponseAborted(f"{self.pool.address} closed mid-answer: {exc}"))

    def pause_writing(self) -> None:  # requests are buffered whole: nothing to pause
        pass

    def resume_writing(self) -> None:
        pass

    def _fail(self, error: UpstreamError) -> None:
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        elif self._done is not None and not self._done.done():
            self._done.set_exception(error)

    # -- httptools callbacks -------------------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.pool.max_head_bytes:
            raise UpstreamProtocolError("answer headers over the limit")
        lname = name.lower()
        if lname in HOP_BY_HOP:
            if lname == b"content-length":
                self._length = int(value)
            elif lname == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            return
        if lname == b"retry-after":
            self._retry_after = float(value) if value.strip().isdigit() else 1.0
        elif lname == b"x-request-id":
            self._has_request_id = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: informational, the real head follows
            self._reset_message(head_only=self._head_only)
            return
        if self._head_only or status in (204, 304):
            self._framing = Framing.NONE
        elif self._chunked:
            self._framing = Framing.CHUNKED
        elif self._length >= 0:
            self._framing = Framing.LENGTH
        else:
            self._framing = Framing.CLOSE
        head = ResponseHead(
            status,
            self._reason,
            self._headers,
            self._framing,
            self._length,
            self._retry_after,
            self._has_request_id,
        )
        if self._head is not None and not self._head.done():
            self._head.set_result(head)
        if self._head_only:  # the parser would wait for a body that never comes
            self.keep_alive = False
            self.pool.forget(self)
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            return
        if self._sink is not None:
            self._sink.body(body)
            return
        self._pending.append(body)
        self._pending_bytes += len(body)
        if self._pending_bytes > MAX_PENDING_BODY and self.transport is not None:
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._head is None or not self._head.done() or self._complete:
            return  # a 1xx answer, or HEAD already finished
        self.keep_alive = self._framing is not Framing.CLOSE and self._parser.should_keep_alive()
        self._finish()

    def _finish(self) -> None:
        self._complete = True
        if self._sink is not None:
            self._sink.end()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)


class UpstreamPool:
    """Keep-alive connections to one backend, at most ``max_connections`` open at once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        connect_timeout: float,
        idle_timeout: float,
        max_head_bytes: int = 65_536,
    ) -> None:
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_head_bytes = max_head_bytes
        self.loop = asyncio.get_running_loop()
        self.size = 0  # connecting, busy or idle
        self._idle: deque[UpstreamConnection] = deque()  # oldest on the left
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self.closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def acquire(self, deadline: float, *, fresh: bool = False) -> UpstreamConnection:
        while True:
            if self.closed:
                raise PoolExhausted(f"{self.address} was removed")
            if not fresh:
                conn = self._take_idle()
                if conn is not None:
                    return conn
            if self.size < self.max_connections:
                return await self._open(deadline)
            await self._wait(deadline)

    def release(self, conn: UpstreamConnection, *, reuse: bool) -> None:
        conn.detach()
        if reuse and conn.keep_alive and conn.usable and not self.closed:
            conn.idle_since = monotonic()
            self._idle.append(conn)
            self._wake()
        else:
            self.close_connection(conn)

    def close_connection(self, conn: UpstreamConnection) -> None:
        self.forget(conn)
        if conn.transport is not None:
            conn.transport.close()

    def forget(self, conn: UpstreamConnection) -> None:
        """The connection no longer counts (closing or closed); idempotent."""
        if not conn.pooled:
            return
        conn.pooled = False
        self.size -= 1
        if self._idle and conn in self._idle:
            self._idle.remove(conn)
        self._wake()

    def sweep(self, now: float) -> None:
        """Closes connections idle longer than the idle timeout (before the backend does)."""
        while self._idle and now - self._idle[0].idle_since >= self.idle_timeout:
            self.close_connection(self._idle[0])

    def close(self) -> None:
        """No new connections; idle ones close now, busy ones when released."""
        self.closed = True
        while self._idle:
            self.close_connection(self._idle[0])
        self._wake(everyone=True)

    def _take_idle(self) -> UpstreamConnection | None:
        now = monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable and now - conn.idle_since < self.idle_timeout:
                conn.reused = True
                return conn
            self.close_connection(conn)
        return None

    async def _open(self, deadline: float) -> UpstreamConnection:
        self.size += 1
        until = min(deadline, monotonic() + self.connect_timeout)
        try:
            async with asyncio.timeout_at(until):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
        except BaseException as exc:
            self.size -= 1
            self._wake()
            if isinstance(exc, OSError | TimeoutError):
                raise ConnectFailed(f"cannot connect to {self.address}: {exc!r}") from exc
            raise
        return conn

    async def _wait(self, deadline: float) -> None:
        waiter: asyncio.Future[bool] = self.loop.create_future()
        self._waiters.append(waiter)
        handle = self.loop.call_at(deadline, _expire, waiter)
        try:
            if not await waiter:
                raise PoolExhausted(f"no connection to {self.address} free in time")
        finally:
            handle.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self, *, everyone: bool = False) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                if not everyone:
                    return


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)

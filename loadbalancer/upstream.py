"""Connections to one backend: an asyncio Protocol parsing answers with httptools, and a
keep-alive pool with a connection limit.

One exchange at a time per connection. The parser's events go straight to the connection's
:class:`Receiver` (the proxy's exchange) as callbacks: no task, future or timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
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
    TlsFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamReset,
)
from loadbalancer.tls import Reloading
from wire.headers import HOP_BY_HOP_BYTES, REQUEST_ID, RETRY_AFTER

__all__ = ["Framing", "Receiver", "ResponseHead", "UpstreamConnection", "UpstreamPool", "hand_over_reading"]

log = logging.getLogger("loadbalancer.upstream")

# framing and hop-by-hop headers: the balancer writes its own
DROPPED = HOP_BY_HOP_BYTES | {b"content-length"}
SPECIAL = DROPPED | {RETRY_AFTER.encode(), REQUEST_ID.encode()}


class Framing(IntEnum):
    NONE = 0  # no body: HEAD, 204, 304
    LENGTH = 1
    CHUNKED = 2
    CLOSE = 3  # until the connection closes


@dataclass(slots=True)
class ResponseHead:
    status: int
    reason: bytes
    lines: list[bytes]  # the end-to-end headers only, as name, ": ", value, CRLF pieces
    framing: Framing
    content_length: int
    retry_after: float | None
    has_request_id: bool


class Receiver(Protocol):
    """Who gets one answer's events (the proxy's exchange)."""

    def upstream_head(self, head: ResponseHead) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_complete(self) -> None: ...

    def upstream_failed(self, error: UpstreamError) -> None: ...

    def flush(self) -> None: ...


def hand_over_reading(old: UpstreamConnection | None, new: UpstreamConnection | None) -> None:
    """A client that is not taking its answer has just been bound to ``new`` instead of
    ``old``: ``new`` is not read meanwhile, and ``old``, no longer its, is read again."""
    if old is not None and old is not new and old.transport is not None:
        old.transport.resume_reading()
    if new is not None and new.transport is not None:
        new.transport.pause_reading()


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.receiver: Receiver | None = None
        self.pooled = True  # counts against the pool's limit
        self.reused = False
        self.idle_since = 0.0
        self.keep_alive = True  # until an answer says otherwise
        self._max_head = pool.max_head_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._reset(head_only=False)

    def _reset(self, *, head_only: bool) -> None:
        self._head_only = head_only
        self._reason = b""
        self._lines: list[bytes] = []  # the end-to-end headers, as name, ": ", value, CRLF
        self._head_bytes = 0
        self._length = -1
        self._chunked = False
        self._retry_after: float | None = None
        self._has_request_id = False
        self._framing = Framing.NONE
        self._received = False
        self._got_head = False

    # -- used by the proxy ---------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() and self.pooled

    def send(self, data: bytes, receiver: Receiver, *, head_only: bool = False) -> None:
        """Writes a whole request; the answer's events go to ``receiver``."""
        assert self.transport is not None
        self._reset(head_only=head_only)
        self.receiver = receiver
        self.transport.write(data)

    def abort(self) -> None:
        """Drops the connection at once; its receiver hears nothing more."""
        self.receiver = None
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
            receiver = self.receiver
            self.abort()
            if receiver is not None:
                receiver.upstream_failed(UpstreamProtocolError(f"bad answer: {exc}"))
        receiver = self.receiver
        if receiver is not None:
            receiver.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        receiver, self.receiver = self.receiver, None
        if receiver is None:
            return
        if not self._got_head:
            stale = self.reused and not self._received
            cls = StaleConnection if stale else UpstreamReset
            receiver.upstream_failed(cls(f"{self.pool.address} closed the connection: {exc}"))
        elif self._framing is Framing.CLOSE:
            self.keep_alive = False
            receiver.upstream_complete()
            receiver.flush()
        else:
            receiver.upstream_failed(ResponseAborted(f"{self.pool.address} closed mid-answer"))

    # -- httptools callbacks -------------------------------------------------------------------
    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self._head_bytes = self._head_bytes + len(name) + len(value)
        if size > self._max_head:
            raise UpstreamProtocolError("answer headers over the limit")
        lname = name.lower()
        if lname in SPECIAL:
            if lname == b"content-length":
                self._length = int(value)
                return
            if not self._special_header(lname, value):
                return
        self._lines += (name, b": ", value, b"\r\n")

    def _special_header(self, lname: bytes, value: bytes) -> bool:
        """Reads a framing, hop-by-hop or otherwise special header but Content-Length; True for
        those passed on to the client (the proxy writes its own framing and drops hop-by-hop)."""
        if lname == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()
            return False
        if lname == b"retry-after":
            self._retry_after = float(value) if value.strip().isdigit() else 1.0
            return True
        if lname == b"x-request-id":
            self._has_request_id = True
            return True
        return False

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: informational, the real head follows
            self._reset(head_only=self._head_only)
            return
        if self._head_only or status in (204, 304):
            self._framing = Framing.NONE
        elif self._chunked:
            self._framing = Framing.CHUNKED
        elif self._length >= 0:
            self._framing = Framing.LENGTH
        else:
            self._framing = Framing.CLOSE
        self._got_head = True
        head = ResponseHead(
            status,
            self._reason,
            self._lines,
            self._framing,
            self._length,
            self._retry_after,
            self._has_request_id,
        )
        if self.receiver is not None:
            self.receiver.upstream_head(head)
        if self._head_only and self.receiver is not None:
            # The parser would wait for the body a HEAD answer never has: finish, then close.
            self.keep_alive = False
            self.pool.forget(self)
            self._complete()

    def on_body(self, body: bytes) -> None:
        if self.receiver is not None and not self._head_only:
            self.receiver.upstream_body(body)

    def on_message_complete(self) -> None:
        if not self._got_head or self._head_only:
            return  # a 1xx answer, or a HEAD answer already finished
        self.keep_alive = self._framing is not Framing.CLOSE and self._parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.upstream_complete()


class UpstreamPool:
    """Keep-alive connections to one backend, at most ``max_connections`` open at once; over TLS
    with ``tls`` (an ``https://`` backend), its certificate checked against ``server_name`` (also
    the SNI; a discovered backend's DNS name), else the host or IP."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        connect_timeout: float,
        idle_timeout: float,
        max_head_bytes: int = 65_536,
        tls: Reloading | None = None,
        server_name: str | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.server_name = server_name or host
        self.address = f"{host}:{port}"
        self.tls = tls
        self.tls_error: str | None = None  # the last handshake failure, until one succeeds
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

    def take(self) -> UpstreamConnection | None:
        """An idle keep-alive connection, most recently used first; None if there is none."""
        now = monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.usable and now - conn.idle_since < self.idle_timeout:
                conn.reused = True
                return conn
            self.close_connection(conn)
        return None

    async def acquire(self, deadline: float, *, fresh: bool = False) -> UpstreamConnection:
        """A connection: idle, new, or the first one freed; raises ConnectFailed or
        PoolExhausted."""
        while True:
            if self.closed:
                raise PoolExhausted(f"{self.address} was removed")
            conn = None if fresh else self.take()
            if conn is not None:
                return conn
            if self.size < self.max_connections:
                return await self._open(deadline)
            await self._wait(deadline)

    def release(self, conn: UpstreamConnection, *, reuse: bool) -> None:
        conn.receiver = None
        if reuse and conn.keep_alive and conn.usable and not self.closed:
            if conn.transport is not None and not conn.transport.is_reading():
                conn.transport.resume_reading()  # a slow client had paused it
            conn.idle_since = monotonic()
            self._idle.append(conn)
            if self._waiters:
                self._wake()
        else:
            self.close_connection(conn)

    def close_connection(self, conn: UpstreamConnection) -> None:
        self.forget(conn)
        conn.receiver = None
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
        if self._waiters:
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

    @property
    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context a new connection is made with (None: plain TCP)."""
        return self.tls.current if self.tls is not None else None

    @property
    def server_hostname(self) -> str | None:
        """The name (or IP address) the backend's certificate must carry."""
        return self.server_name if self.tls is not None else None

    async def _open(self, deadline: float) -> UpstreamConnection:
        self.size += 1
        until = min(deadline, monotonic() + self.connect_timeout)
        try:
            async with asyncio.timeout_at(until):
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self.tls_context,
                    server_hostname=self.server_hostname,
                )
        except BaseException as exc:
            self.size -= 1
            self._wake()
            if isinstance(exc, ssl.SSLError | ssl.CertificateError):
                raise self.tls_failed(exc) from exc
            if isinstance(exc, OSError | TimeoutError):
                raise ConnectFailed(f"cannot connect to {self.address}: {exc!r}") from exc
            raise
        self.tls_error = None
        return conn

    def tls_failed(self, exc: Exception) -> TlsFailed:
        """The error for a failed handshake, logged once per reason (not once per request)."""
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        if reason != self.tls_error:
            self.tls_error = reason
            log.warning("TLS to a backend failed; it is not used while this lasts",
                        extra={"backend": self.address, "reason": reason, "error": str(exc)})
        return TlsFailed(f"TLS to {self.address} failed: {reason}")

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

"""The client side: an asyncio Protocol parsing requests with httptools, one task per request
(pipelined requests queue behind it), answers written through a small buffer flushed once per
upstream read."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import cast

import httptools

from loadbalancer.errors import (
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    ResponseAborted,
    UpstreamError,
)
from loadbalancer.proxy import Proxy
from loadbalancer.upstream import UpstreamConnection
from loadbalancer.wire import REQUEST_DROP, Request, error_response

__all__ = ["ClientConnection"]

log = logging.getLogger("loadbalancer.access")
MAX_QUEUED = 4  # pipelined requests read ahead before reading pauses
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,128}")  # printable ASCII, no spaces


class ClientConnection(asyncio.Protocol):
    def __init__(self, proxy: Proxy, connections: set[ClientConnection]) -> None:
        self.proxy = proxy
        self.settings = proxy.settings
        self.loop = proxy.loop
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.closing = False  # finish the current answer, then close
        self.client = b"-"
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._upstream: UpstreamConnection | None = None
        self._write_paused = False
        self._read_paused = False
        self._reading = False  # inside a request message
        self._req: Request | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_size = 0
        self._url = b""
        self._length = -1
        self._out: list[bytes] = []
        self._chunked = False
        self._close = False
        self._expect = False
        self.started = False  # the current answer has begun

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]).encode() if peer else b"-"
        stats = self.proxy.stats
        if stats.client_connections >= self.settings.max_client_connections:
            msg = "too many client connections"
            transport.write(error_response(503, "overloaded", msg, b"-", retry_after=1, close=True))
            transport.close()
            return
        stats.client_connections += 1
        self.connections.add(self)
        self._arm(self.settings.client_keepalive_timeout, self._on_idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.connections:
            self.connections.discard(self)
            self.proxy.stats.client_connections -= 1
        self._cancel_timer()
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()  # the client left: stop its upstream exchange

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # no protocol upgrades: answer what was read, then close
            self._pause_reading()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause if isinstance(cause, RequestError) else BadRequest(str(exc)))
        except httptools.HttpParserError as exc:
            self._refuse(BadRequest(f"malformed request: {exc}"))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reading = True
        self._url = b""
        self._head_size = 0
        self._body = []
        self._body_size = 0
        self._length = -1
        self._expect = False
        self._req = Request(b"", b"", True, True, b"", self.client, monotonic())
        self._arm(self.settings.client_request_timeout, self._on_read_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._req
        assert req is not None
        self._count(len(name) + len(value) + 4)
        if len(req.headers) >= self.settings.max_headers:
            raise HeadersTooLarge("too many request headers")
        lname = name.lower()
        if lname in REQUEST_DROP:
            if lname == b"content-length":
                self._length = int(value) if value.isdigit() else -1
            elif lname == b"expect" and value.lower() == b"100-continue":
                self._expect = True
            return
        if lname == b"x-request-id":
            if _REQUEST_ID.fullmatch(value):
                req.request_id = value
        elif lname == b"x-request-timeout-ms":
            req.timeout_ms = _parse_timeout(value)
        elif lname == b"x-forwarded-for":
            req.forwarded_for = value
        else:
            if lname == b"host":
                req.has_host = True
            req.headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None and self.transport is not None
        parser = self._parser
        req.method = parser.get_method()
        req.target = self._url
        req.http11 = parser.get_http_version() == "1.1"
        req.keep_alive = parser.should_keep_alive()
        if not req.request_id:
            req.request_id = os.urandom(16).hex().encode()
        if self._length > self.settings.max_body_bytes:
            raise PayloadTooLarge(f"body over {self.settings.max_body_bytes} bytes")
        if self._expect:
            self._expect = False
            if req.http11:
                self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.settings.max_body_bytes:
            raise PayloadTooLarge(f"body over {self.settings.max_body_bytes} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        self._reading = False
        self._cancel_timer()
        req.body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        req.build_prefix()
        self._queue.append(req)
        self._req = None
        if self._task is None:
            self._task = self.loop.create_task(self._serve())
        elif len(self._queue) >= MAX_QUEUED:
            self._pause_reading()

    # -- serving -------------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while self._queue and self.transport is not None and not self.transport.is_closing():
                request = self._queue.popleft()
                keep = await self._handle(request)
                if not keep:
                    self.transport.close()
                    return
                if self._read_paused and not self.closing and len(self._queue) < MAX_QUEUED:
                    self._read_paused = False
                    self.transport.resume_reading()
        finally:
            self._task = None
        if self.transport is None or self._reading:
            return
        if self.closing:
            self.transport.close()
        else:
            self._arm(self.settings.client_keepalive_timeout, self._on_idle_timeout)

    async def _handle(self, request: Request) -> bool:
        """Answers one request; False when the connection must close afterwards."""
        self.started, self._out, self._close = False, [], False
        status, backend = 0, None
        try:
            status, backend = await self.proxy.forward(request, self)
        except RequestError as exc:
            status = self._answer_error(request, exc)
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code)
            raise
        except ResponseAborted:
            status = 502
            self.abort()
            return False
        except UpstreamError as exc:
            status = self._answer_error(request, exc, code="bad_gateway", status=502)
        except Exception:
            log.exception("internal error", extra={"request_id": request.request_id.decode()})
            status = self._answer_error(request, RequestError("internal error"))
        finally:
            self._bind(None)
            self._finish_stats(request, status, backend)
        return request.keep_alive and not self._close and not self.closing

    def _answer_error(
        self, request: Request, exc: Exception, *, code: str = "", status: int = 0
    ) -> int:
        """Writes the balancer's own JSON error, or aborts if an answer had begun."""
        if self.started:
            self.abort()
            return 502
        status = status or getattr(exc, "status", 500)
        code = code or getattr(exc, "code", "internal_error")
        retry_after = getattr(exc, "retry_after", None)
        close = not request.keep_alive or self.closing
        self._close = close
        if self.transport is not None:
            data = error_response(
                status, code, str(exc), request.request_id, retry_after=retry_after, close=close
            )
            self.transport.write(data)
        return status

    def _finish_stats(self, request: Request, status: int, backend: object) -> None:
        seconds = monotonic() - request.started
        self.proxy.stats.count_response(status, seconds)
        if self.settings.access_log:
            log.info(
                "request",
                extra={
                    "request_id": request.request_id.decode("latin-1"),
                    "method": request.method.decode("latin-1"),
                    "path": request.target.decode("latin-1")[:256],
                    "status": status,
                    "upstream": getattr(backend, "id", None),
                    "duration_ms": round(seconds * 1e3, 3),
                },
            )

    # -- the Downstream sink the proxy writes to -----------------------------------------------
    def start(self, head: bytes, *, chunked: bool, close: bool) -> None:
        self.started = True
        self._chunked = chunked
        self._close = close
        self._out.append(head)

    def body(self, data: bytes) -> None:
        if self._chunked:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def end(self) -> None:
        if self._chunked:
            self._out.append(b"0\r\n\r\n")

    def flush(self) -> None:
        if self._out and self.transport is not None:
            out = self._out
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def bind_upstream(self, conn: UpstreamConnection | None) -> None:
        self._bind(conn)

    def _bind(self, conn: UpstreamConnection | None) -> None:
        old = self._upstream
        if old is not None and old is not conn and self._write_paused and old.transport:
            old.transport.resume_reading()
        self._upstream = conn
        if conn is not None and self._write_paused and conn.transport is not None:
            conn.transport.pause_reading()

    # -- lifecycle -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful: close now if idle, else after the current answer."""
        self.closing = True
        if self._task is None and not self._reading and self.transport is not None:
            self.transport.close()

    def _refuse(self, exc: RequestError) -> None:
        """Answers a request that could not be read, then closes."""
        req = self._req
        rid = req.request_id if req is not None and req.request_id else b""
        rid = rid or os.urandom(16).hex().encode()
        self._reading = False
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            if self._task is None:  # otherwise an answer is on its way: just close after it
                data = error_response(exc.status, exc.code, str(exc), rid, close=True)
                self.transport.write(data)
                self.transport.close()
            else:
                self.closing = True
                self._pause_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.settings.max_header_bytes:
            raise HeadersTooLarge(f"request head over {self.settings.max_header_bytes} bytes")

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_idle_timeout(self) -> None:
        if self._task is None and not self._reading and self.transport is not None:
            self.transport.close()

    def _on_read_timeout(self) -> None:
        if self._reading and self.transport is not None:
            self._refuse(RequestTimeout("the request was not received in time"))


def _parse_timeout(value: bytes) -> float | None:
    try:
        timeout = float(value)
    except ValueError:
        return None
    return timeout if timeout >= 0 and timeout == timeout else None  # NaN check

"""The client side: an asyncio Protocol parsing requests with httptools. Each request becomes an
:class:`Exchange` (pipelined ones queue behind it); answers go out through a small buffer
flushed once per upstream read, so that a small answer leaves in one write. A WebSocket upgrade
(when nothing is pipelined ahead of it) becomes a :class:`Tunnel` and the connection a pipe."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any, cast

import httptools

from loadbalancer.errors import (
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
)
from loadbalancer.exchange import Exchange
from loadbalancer.messages import SPECIAL, Request, error_response, response_head, take_header
from loadbalancer.proxy import Proxy
from loadbalancer.tunnel import Tunnel, is_websocket_upgrade
from loadbalancer.upstream import Framing, ResponseHead, UpstreamConnection, hand_over_reading
from wire.ids import new_request_id_bytes

__all__ = ["ClientConnection", "log_access"]

log = logging.getLogger("loadbalancer.access")
MAX_QUEUED = 4  # pipelined requests read ahead before reading pauses
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientConnection(asyncio.Protocol):
    """One client connection; with ``h2`` (the proxy port over TLS), one whose handshake chose
    ALPN ``h2`` is handed to the protocol ``h2`` makes (:mod:`loadbalancer.h2_downstream`)."""

    def __init__(self, proxy: Proxy, connections: set[Any],
                 h2: Callable[[], asyncio.Protocol] | None = None) -> None:
        self.proxy = proxy
        self._h2 = h2
        self.settings = settings = proxy.settings
        self.loop = proxy.loop
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.closing = False  # finish the current answer, then close
        self.client = b"-"
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Request] = deque()
        self._exchange: Exchange | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tick = min(settings.client_keepalive_timeout, settings.client_request_timeout)
        self._max_head = settings.max_header_bytes
        self._max_headers = settings.max_headers
        self._max_body = settings.max_body_bytes
        self._last_active = monotonic()
        self._upstream: UpstreamConnection | None = None
        self._write_paused = False
        self._read_paused = False
        self._req: Request | None = None  # the request being read
        self._body: list[bytes] = []
        self._body_size = 0
        self._head_size = 0
        self._length = -1
        self._expect = False
        self._out: list[bytes] = []
        self._chunked = False
        self._close = False
        self._upgrade = b""  # the request's Upgrade header
        self._upgrading: Request | None = None  # a WebSocket upgrade request, read whole
        self._tunnel: Tunnel | None = None
        self.started = False  # the current answer has begun

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        h2 = self._h2 if self._h2 is not None and _chose_h2(t) else None
        stats = self.proxy.stats
        if stats.client_connections >= self.settings.max_client_connections:
            if h2 is None:
                msg = "too many client connections"
                t.write(error_response(503, "overloaded", msg, b"-", retry_after=1, close=True))
            t.close()
            return
        if h2 is not None:
            protocol = h2()
            t.set_protocol(protocol)
            protocol.connection_made(t)
            return
        peer = t.get_extra_info("peername")
        self.client = str(peer[0]).encode() if peer else b"-"
        stats.client_connections += 1
        self.connections.add(self)
        self._timer = self.loop.call_later(self._tick, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.connections:
            self.connections.discard(self)
            self.proxy.stats.client_connections -= 1
        if self._timer is not None:
            self._timer.cancel()
        self._queue.clear()
        self.transport = None
        if self._exchange is not None:
            self._exchange.cancel()  # the client left: stop its upstream exchange
        if self._tunnel is not None:
            self._tunnel.client_closed()

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            return self._tunnel.from_client(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            request, self._upgrading = self._upgrading, None
            if request is not None and self._exchange is None and not self._queue:
                return self._open_tunnel(request, data[int(exc.args[0]) :])
            self.closing = True  # other upgrades: answer what was read, then close
            if request is not None:
                self._queue.append(request)  # pipelined behind a request: an ordinary GET
            self._pause_reading()
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause if isinstance(cause, RequestError) else BadRequest(str(exc)))
        except httptools.HttpParserError as exc:
            self._refuse(BadRequest(f"malformed request: {exc}"))

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._tunnel is not None:
            self._tunnel.pause_upstream(True)
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._tunnel is not None:
            self._tunnel.pause_upstream(False)
        if self._upstream is not None and self._upstream.transport is not None:
            self._upstream.transport.resume_reading()

    # -- httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._head_size = 0
        self._body = []
        self._body_size = 0
        self._length = -1
        self._expect = False
        self._upgrade = b""
        self._req = Request(b"", b"", True, True, b"", self.client, monotonic())

    def on_url(self, url: bytes) -> None:
        req = self._req
        assert req is not None
        req.target += url
        self._head_size += len(url)
        if self._head_size > self._max_head:
            raise HeadersTooLarge(f"request head over {self._max_head} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._req
        assert req is not None
        size = self._head_size = self._head_size + len(name) + len(value) + 4
        if size > self._max_head:
            raise HeadersTooLarge(f"request head over {self._max_head} bytes")
        lname = name.lower()
        if lname not in SPECIAL:
            req.headers.append((name, value))
        elif lname == b"content-length":
            self._length = int(value) if value.isdigit() else -1
        else:
            self._special_header(req, lname, name, value)

    def _special_header(self, req: Request, lname: bytes, name: bytes, value: bytes) -> None:
        """Headers the balancer reads, rewrites or drops (hop-by-hop), but Content-Length."""
        if lname == b"expect":
            self._expect = value.lower() == b"100-continue"
        elif lname == b"upgrade":
            self._upgrade = value
        else:
            take_header(req, lname, name, value)

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None and self.transport is not None
        parser = self._parser
        req.method = parser.get_method()
        req.http11 = parser.get_http_version() == "1.1"
        req.keep_alive = parser.should_keep_alive()
        if not req.request_id:
            req.request_id = new_request_id_bytes()
        if len(req.headers) > self._max_headers:
            raise HeadersTooLarge(f"more than {self._max_headers} request headers")
        if self._length > self._max_body:
            raise PayloadTooLarge(f"body over {self._max_body} bytes")
        if self._expect and req.http11:
            self.transport.write(CONTINUE)

    def on_body(self, body: bytes) -> None:
        size = self._body_size = self._body_size + len(body)
        if size > self._max_body:
            raise PayloadTooLarge(f"body over {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        req, self._req = self._req, None
        assert req is not None
        body = self._body
        req.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        req.build_prefix()
        if self._parser.should_upgrade() and is_websocket_upgrade(req.method, self._upgrade):
            self._upgrading = req  # the parser stops next (HttpParserUpgrade)
            return
        if self._exchange is None and not self._queue:
            self._begin(req)
            return
        self._queue.append(req)
        if len(self._queue) >= MAX_QUEUED:
            self._pause_reading()

    # -- exchanges -----------------------------------------------------------------------------
    def _begin(self, request: Request) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.started, self._close, self._out = False, False, []
        exchange = self._exchange = Exchange(self.proxy, request, self)
        exchange.start()

    def exchange_done(self, exchange: Exchange) -> None:
        """The answer is complete (or cut): count it, then keep-alive, next request, or close."""
        self._exchange = None
        self.flush()
        request = exchange.request
        now = monotonic()
        self._last_active = now
        self.proxy.stats.count_response(exchange.status, now - request.started)
        if self.settings.access_log:
            log_access(exchange, now)
        transport = self.transport
        if transport is None:
            return
        if not request.keep_alive or self._close or (self.closing and not self._queue):
            transport.close()
        elif self._queue:
            if self._read_paused and not self.closing:
                self._read_paused = False
                transport.resume_reading()
            self.loop.call_soon(self._begin, self._queue.popleft())

    def _open_tunnel(self, request: Request, early: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self._out = []
        self._last_active = monotonic()
        tunnel = self._tunnel = Tunnel(self.proxy, request, self, early)
        tunnel.start()

    def tunnel_done(self, tunnel: Tunnel) -> None:
        """The tunnel has ended (or its handshake failed): what is buffered goes, then close."""
        if tunnel is not self._tunnel:
            return
        self._tunnel = None
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def answer_error(self, request: Request, error: Exception, status: int, code: str) -> None:
        """Writes the balancer's own JSON error (the exchange has not started an answer)."""
        retry_after = getattr(error, "retry_after", None)
        close = not request.keep_alive or self.closing or status == 400
        self._close = close
        self._out.append(
            error_response(status, code, str(error), request.request_id, retry_after=retry_after, close=close)
        )

    # -- ClientSide: the answer's bytes --------------------------------------------------------
    def start_answer(self, head: ResponseHead, upstream: bytes, request: Request) -> None:
        """An HTTP/1.1 head; a body without a length goes chunked, or (to an HTTP/1.0 client)
        until the connection closes."""
        streamed = head.framing is Framing.CHUNKED or head.framing is Framing.CLOSE
        http11 = request.http11
        close = self.closing or not request.keep_alive or (streamed and not http11)
        self.started = True
        self._chunked = streamed and http11
        self._close = close
        self._out.append(
            response_head(head, upstream=upstream, request_id=request.request_id, http11=http11, close=close)
        )

    def body(self, data: bytes) -> None:
        if self._chunked:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def end(self) -> None:
        if self._chunked:
            self._out.append(b"0\r\n\r\n")

    def retract(self) -> None:
        """Forgets an answer begun but not written (the exchange held it back)."""
        self.started, self._chunked, self._close, self._out = False, False, False, []

    def flush(self) -> None:
        out = self._out
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def bind_upstream(self, conn: UpstreamConnection | None) -> None:
        """Couples flow control: while the client reads slowly, the backend is not read."""
        old, self._upstream = self._upstream, conn
        if self._write_paused:
            hand_over_reading(old, conn)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- lifecycle -----------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful: close now if idle, else after the current answer."""
        self.closing = True
        if self._tunnel is not None:
            self._tunnel.close()  # an open WebSocket holds no request to finish
        elif self._exchange is None and self._req is None and self.transport is not None:
            self.transport.close()

    def _refuse(self, error: RequestError) -> None:
        """Answers a request that could not be read, then closes."""
        req, self._req = self._req, None
        rid = req.request_id if req is not None and req.request_id else new_request_id_bytes()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._exchange is None:
            transport.write(error_response(error.status, error.code, str(error), rid, close=True))
            transport.close()
        else:  # an answer is on its way: close after it
            self.closing = True
            self._pause_reading()

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._read_paused = True
            self.transport.pause_reading()

    def _on_timer(self) -> None:
        """One lazy timer per connection: request-read timeout and keep-alive idle timeout."""
        self._timer = None
        if self.transport is None or self._tunnel is not None:
            return  # a tunnel times itself
        now, s = monotonic(), self.settings
        if self._req is not None and now - self._req.started >= s.client_request_timeout:
            return self._refuse(RequestTimeout("the request was not received in time"))
        idle = self._exchange is None and self._req is None
        if idle and now - self._last_active >= s.client_keepalive_timeout:
            self.transport.close()
            return
        self._timer = self.loop.call_later(self._tick, self._on_timer)


def _chose_h2(transport: asyncio.Transport) -> bool:
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"


def log_access(exchange: Exchange, now: float) -> None:
    """The access log's line for an exchange that ended at ``now``."""
    request = exchange.request
    backend = exchange.tried[-1].id if exchange.tried else None
    log.info(
        "request",
        extra={
            "request_id": request.request_id.decode("latin-1"),
            "method": request.method.decode("latin-1"),
            "path": request.target.decode("latin-1")[:256],
            "status": exchange.status,
            "upstream": backend,
            "attempts": len(exchange.tried),
            "duration_ms": round((now - request.started) * 1e3, 3),
        },
    )


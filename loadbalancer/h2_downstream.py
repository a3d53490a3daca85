"""HTTP/2 on the proxy port: a TLS client that offers ALPN ``h2`` gets it (as from Envoy or
nginx), and each of its streams is a request like any other: an HTTP one goes to the HTTP
backends as an HTTP/1.1 :class:`Exchange` (the same policy, retries, deadlines and held answers
as an HTTP/1.1 client's), its answer sent back as HTTP/2 frames; a gRPC call (``content-type:
application/grpc``) goes to the gRPC side when there is one (``--grpc-port``), and is answered
``UNIMPLEMENTED`` when there is none.

:class:`H2Downstream` is the connection (it takes over from the HTTP/1.1 protocol once the
handshake has chosen ``h2``); :class:`HttpStream` is one HTTP request on it. Flow control: a
request's body is buffered whole (up to ``max_body_bytes``, as over HTTP/1.1) and acknowledged as
it comes; an answer goes out as the client's windows allow and as fast as it reads (the
transport pauses writing past its high-water mark), the backend's connection not read meanwhile.
"""

from __future__ import annotations

import asyncio
import re
from time import monotonic

from hpack import NeverIndexedHeaderTuple

from loadbalancer.downstream import ClientConnection, log_access
from loadbalancer.errors import (
    BadRequest,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    answer_of,
)
from loadbalancer.exchange import Exchange
from loadbalancer.grpc_front import GrpcFront, H2Server, Stream
from loadbalancer.grpc_h2 import malformed
from loadbalancer.grpc_upstream import Headers
from loadbalancer.messages import SPECIAL, Request, error_response, take_header
from loadbalancer.proxy import Proxy
from loadbalancer.upstream import Framing, ResponseHead, UpstreamConnection, hand_over_reading
from wire.grpc_status import GrpcStatus
from wire.headers import REQUEST_ID, UPSTREAM
from wire.ids import new_request_id_bytes

__all__ = ["H2Downstream", "HttpStream", "answer_fields", "answer_headers"]

# Connection-specific fields, which HTTP/2 does not carry (RFC 9113, 8.2.2).
_CONNECTION_FIELDS = frozenset({b"connection", b"keep-alive", b"proxy-connection",
                                b"transfer-encoding", b"upgrade"})
_REQUEST_ID = REQUEST_ID.encode()
_UPSTREAM = UPSTREAM.encode()
_VOLATILE = frozenset({_REQUEST_ID, b"content-length", b"date", b"etag", b"last-modified"})
_GRPC = b"application/grpc"
# What an HTTP/1.1 request line can carry: a token, and a target without spaces or controls.
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PATH = re.compile(rb"[\x21-\x7e\x80-\xff]+")


def answer_fields(head: ResponseHead, upstream: bytes, request_id: bytes) -> Headers:
    """A backend's answer head as HTTP/2 fields: those :func:`response_head` gives an HTTP/1.1
    client, less HTTP/1.1's framing (``transfer-encoding``, ``connection``); ``content-length``
    where the backend sent one. The backend's hop-by-hop fields were dropped as it was read."""
    fields: list[tuple[bytes, bytes]] = [(b":status", b"%d" % head.status)]
    lines = head.lines
    for i in range(0, len(lines), 4):
        fields.append(_field(lines[i].lower(), lines[i + 2]))
    fields.append((_UPSTREAM, upstream))
    if not head.has_request_id:
        fields.append(NeverIndexedHeaderTuple(_REQUEST_ID, request_id))
    if head.content_length >= 0 and head.framing is not Framing.CHUNKED:
        fields.append(NeverIndexedHeaderTuple(b"content-length", b"%d" % head.content_length))
    return fields


def _field(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    """The fields whose values change from answer to answer are not indexed by HPACK: they
    would only push the repeated ones out of its table (and void what ``grpc_h2`` remembers of
    it)."""
    return NeverIndexedHeaderTuple(name, value) if name in _VOLATILE else (name, value)


def answer_headers(head: bytes) -> Headers:
    """An HTTP/1.1 answer head (status line, header lines, the blank line) as HTTP/2 fields:
    ``:status`` first, names lowercased, connection-specific fields left out."""
    lines = head.split(b"\r\n")
    fields: list[tuple[bytes, bytes]] = [(b":status", lines[0][9:12])]
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        if name not in _CONNECTION_FIELDS:
            fields.append(_field(name, value.strip()))
    return fields


class H2Downstream(H2Server):
    """One HTTP/2 client of the proxy port: an :class:`HttpStream` per request, or a gRPC call
    on ``grpc`` (None: no gRPC side, and its calls are answered ``UNIMPLEMENTED``)."""

    def __init__(self, proxy: Proxy, connections: set[ClientConnection | H2Downstream],
                 grpc: GrpcFront | None) -> None:
        super().__init__()
        self.proxy, self.connections, self.grpc = proxy, connections, grpc
        self.client = b"-"
        self.closing = False
        self.write_paused = False  # the transport's buffer is over its high-water mark
        s = proxy.settings
        self._tick = min(s.client_keepalive_timeout, s.client_request_timeout)
        self._timer: asyncio.TimerHandle | None = None
        self._last_active = monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.client = str(peer[0]).encode() if peer else b"-"
        self.connections.add(self)
        self.proxy.stats.client_connections += 1
        super().connection_made(transport)
        self._timer = self.proxy.loop.call_later(self._tick, self._on_timer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.connections:
            self.connections.discard(self)
            self.proxy.stats.client_connections -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_active = monotonic()
        super().data_received(data)

    def pause_writing(self) -> None:
        """The client does not read what its windows let through: no stream writes more, and
        their backends are not read, until it does."""
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.calls.values()):
            stream.on_client_writable()

    def _on_timer(self) -> None:
        """As over HTTP/1.1: a request not read within ``client_request_timeout`` is answered
        408; a connection idle (no stream open) for ``client_keepalive_timeout`` is closed,
        after a GOAWAY."""
        self._timer = None
        if self.transport is None:
            return
        now, s = monotonic(), self.proxy.settings
        for stream in list(self.calls.values()):
            if isinstance(stream, HttpStream):
                stream.check_read_time(now, s.client_request_timeout)
        if not self.calls and now - self._last_active >= s.client_keepalive_timeout:
            return self.shutdown()
        self._timer = self.proxy.loop.call_later(self._tick, self._on_timer)

    def open_stream(self, stream_id: int, headers: Headers) -> Stream:
        if self.closing:
            return _Refused(self, stream_id)
        content_type = next((v for k, v in headers if k == b"content-type"), b"")
        if content_type.startswith(_GRPC):
            if self.grpc is not None:
                return self.grpc.call(self, stream_id, headers)
            return _NoGrpc(self, stream_id)
        return HttpStream(self, stream_id, headers)

    def shutdown(self) -> None:
        """Graceful: an idle connection gets GOAWAY and is closed; a busy one finishes its
        streams, then is closed, and a stream opened meanwhile is refused (``REFUSED_STREAM``:
        not processed, safe to send again elsewhere). No GOAWAY goes while streams are open:
        some clients (httpx's ``httpcore``) then fail each stream whose answer they have not
        yet taken in, though RFC 9113 lets the streams below its last stream id finish."""
        self.closing = True
        if not self.calls:
            self.goaway()

    def call_done(self, call: Stream) -> None:
        super().call_done(call)
        self._last_active = monotonic()
        if self.closing and not self.calls and self.transport is not None:
            self.flush()  # the last answer's frames, then the close
            self.transport.close()


class _Answered:
    """A stream the connection answers at once, with no backend; what the client still sends
    on it is acknowledged and dropped."""

    def __init__(self, conn: H2Downstream, stream_id: int) -> None:
        self.conn, self.stream_id = conn, stream_id

    def start(self) -> None:
        self.answer()
        self.conn.call_done(self)

    def answer(self) -> None:
        raise NotImplementedError

    def on_request_data(self, data: bytes, flow: int, end: bool) -> None:
        self.conn.ack(self.stream_id, flow)

    def on_request_end(self) -> None:
        pass

    def on_client_writable(self) -> None:
        pass

    def cancel(self) -> None:
        pass


class _NoGrpc(_Answered):
    """A gRPC call on a balancer without a gRPC side: ``UNIMPLEMENTED``, trailers only."""

    def answer(self) -> None:
        message = b"this load balancer has no gRPC backends (--grpc-port, --grpc-backend)"
        self.conn.send_headers(self.stream_id, [
            (b":status", b"200"), (b"content-type", _GRPC),
            (b"grpc-status", b"%d" % GrpcStatus.UNIMPLEMENTED), (b"grpc-message", message)], True)


class _Refused(_Answered):
    """A stream opened while the connection shuts down: reset with ``REFUSED_STREAM``."""

    def answer(self) -> None:
        self.conn.refuse(self.stream_id)


class HttpStream:
    """One HTTP request on an HTTP/2 connection: read whole, forwarded by an :class:`Exchange`
    (whose client side this is), its answer written as HEADERS and DATA frames."""

    closing = False  # Exchange reads it; an HTTP/2 stream never asks to close its connection

    def __init__(self, conn: H2Downstream, stream_id: int, headers: Headers) -> None:
        self.conn, self.stream_id = conn, stream_id
        settings = conn.proxy.settings
        self.request = Request(b"", b"", True, True, b"", conn.client, monotonic())
        self.error: RequestError | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._max_body = settings.max_body_bytes
        self._length = -1
        try:
            self._read_head(headers, settings.max_header_bytes, settings.max_headers)
        except RequestError as exc:
            self.error = exc
        if not self.request.request_id:
            self.request.request_id = new_request_id_bytes()
        self.exchange: Exchange | None = None
        # the answer: its fields until sent, then its body as the windows allow
        self._fields: Headers | None = None
        self._headers_sent = False
        self._end_sent = False  # END_STREAM (or RST_STREAM) has gone: nothing more to write
        self._out: list[bytes | memoryview] = []
        self._ended = False  # the whole answer is in _out
        self._done = False  # the exchange has ended
        self._upstream: UpstreamConnection | None = None
        self._blocked = False  # the client's window is closed: the backend is not read

    # -- the request ---------------------------------------------------------------------------
    def _read_head(self, headers: Headers, max_head: int, max_headers: int) -> None:
        req = self.request
        authority = b""
        size = 0
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name[:1] == b":":
                if name == b":method":
                    req.method = value
                elif name == b":path":
                    req.target = value
                elif name == b":authority":
                    authority = value
            elif name not in SPECIAL:
                req.headers.append((name, value))
            elif name == b"content-length":
                if not value.isdigit() or 0 <= self._length != int(value):
                    raise BadRequest("an invalid Content-Length")
                self._length = int(value)
            elif name in _CONNECTION_FIELDS:
                raise BadRequest(f"{name.decode('latin-1')} is not allowed in HTTP/2")
            else:
                take_header(req, name, name, value)
        if malformed(headers):
            raise BadRequest("a header's name or value is not allowed in HTTP/2")
        if _METHOD.fullmatch(req.method) is None or _PATH.fullmatch(req.target) is None:
            raise BadRequest("an HTTP/2 request needs a valid :method and :path")
        if req.method == b"CONNECT":
            raise BadRequest("CONNECT is not proxied")
        if size > max_head:
            raise HeadersTooLarge(f"request head over {max_head} bytes")
        if len(req.headers) > max_headers:
            raise HeadersTooLarge(f"more than {max_headers} request headers")
        if self._length > self._max_body:
            raise PayloadTooLarge(f"body over {self._max_body} bytes")
        if authority and not req.has_host:
            req.has_host = True
            req.headers.append((b"host", authority))

    # -- Stream: the connection's events -------------------------------------------------------
    def start(self) -> None:
        """The stream has opened: a request refused while its head was read is answered now."""
        if self.error is not None:  # what the client still sends is dropped
            self._refuse(self.error)

    def on_request_data(self, data: bytes, flow: int, end: bool) -> None:
        self.conn.ack(self.stream_id, flow)  # buffered whole, bounded by max_body_bytes
        if self.error is None:
            self._size += len(data)
            if self._size > self._max_body:
                self._refuse(PayloadTooLarge(f"body over {self._max_body} bytes"))
            else:
                self._body.append(data)
        if end:
            self.on_request_end()

    def on_request_end(self) -> None:
        if self.error is not None or self.exchange is not None:
            return
        if 0 <= self._length != self._size:  # RFC 9113, 8.1.1: malformed
            return self._refuse(BadRequest("the body's length is not its Content-Length"))
        req = self.request
        body = self._body
        req.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        req.build_prefix()
        self.exchange = Exchange(self.conn.proxy, req, self)
        self.exchange.start()

    def on_client_writable(self) -> None:
        self._send()

    def check_read_time(self, now: float, limit: float) -> None:
        """A request still being read ``limit`` seconds after it began is answered 408."""
        if self.exchange is None and self.error is None and now - self.request.started >= limit:
            self._refuse(RequestTimeout("the request was not received in time"))

    def cancel(self) -> None:
        """The client reset the stream, or its connection is gone."""
        self._done = True
        if self.exchange is not None:
            self.exchange.cancel()

    def _refuse(self, error: RequestError) -> None:
        """The balancer's own answer to a request it will not forward; the rest of its body is
        dropped as it comes."""
        self.error, self._body = error, []
        status, code = answer_of(error)
        self.answer_error(self.request, error, status, code)
        self._done = True
        self.conn.proxy.stats.count_response(status, monotonic() - self.request.started)
        self._send()

    # -- ClientSide: the exchange's answer ----------------------------------------------------
    def start_answer(self, head: ResponseHead, upstream: bytes, request: Request) -> None:
        self._fields, self._out, self._ended = answer_fields(head, upstream, request.request_id), [], False

    def body(self, data: bytes) -> None:
        self._out.append(data)

    def end(self) -> None:
        self._ended = True

    def flush(self) -> None:
        self._send()

    def retract(self) -> None:
        self._fields, self._out, self._ended = None, [], False

    def bind_upstream(self, conn: UpstreamConnection | None) -> None:
        old, self._upstream = self._upstream, conn
        if self._blocked:
            hand_over_reading(old, conn)

    def answer_error(self, request: Request, error: Exception, status: int, code: str) -> None:
        """The answer HTTP/1.1 clients get (:func:`error_response`), as HTTP/2 fields and body."""
        retry_after = getattr(error, "retry_after", None)
        answer = error_response(status, code, str(error), request.request_id, retry_after=retry_after)
        head, _, body = answer.partition(b"\r\n\r\n")
        self._fields, self._out, self._ended = answer_headers(head), [body], True

    def abort(self) -> None:
        """The answer cannot be finished (its backend failed mid-way): the stream is reset."""
        self._fields, self._out, self._ended = None, [], False
        self._end_sent = True
        self.conn.reset(self.stream_id)

    def exchange_done(self, exchange: Exchange) -> None:
        self._done = True
        now = monotonic()
        self.conn.proxy.stats.count_response(exchange.status, now - exchange.request.started)
        if self.conn.proxy.settings.access_log:
            log_access(exchange, now)
        self._send()

    # -- writing -------------------------------------------------------------------------------
    def _send(self) -> None:
        """Writes what the client's windows allow; once the whole answer has gone and the
        exchange has ended, the stream is done."""
        conn, sid = self.conn, self.stream_id
        if self._fields is not None and not self._headers_sent:
            self._headers_sent = True
            end = self._ended and not any(self._out)
            conn.send_headers(sid, self._fields, end)
            if end:
                self._out, self._end_sent = [], True
        if not self._headers_sent or self._end_sent:
            if self._done:  # answered, reset, or ended with nothing to send (the client left)
                self._finished()
            return
        out = self._out
        if out and conn.write_paused:
            return self._block(True)
        while out:
            chunk = out[0]
            last = self._ended and len(out) == 1
            sent = conn.send_data(sid, chunk, last)
            if sent < len(chunk):
                out[0] = memoryview(chunk)[sent:]
                return self._block(True)
            out.pop(0)
            self._end_sent = last
        self._block(False)
        if self._ended and not self._end_sent:
            self._end_sent = True
            conn.send_data(sid, b"", True)
        if self._end_sent and self._done:
            self._finished()

    def _block(self, blocked: bool) -> None:
        if blocked is self._blocked:
            return
        self._blocked = blocked
        upstream = self._upstream
        if upstream is not None and upstream.transport is not None:
            if blocked:
                upstream.transport.pause_reading()
            else:
                upstream.transport.resume_reading()

    def _finished(self) -> None:
        self.conn.call_done(self)

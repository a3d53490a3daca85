"""One gRPC call (one HTTP/2 stream of a client) proxied to a backend: a state machine driven by
the two connections' events, its tries chosen, charged and timed by the one
:class:`~loadbalancer.retry.RetryState` that HTTP requests and WebSockets use.

Retried on another backend: a call that never reached one (connect failed, the stream refused,
above a GOAWAY's last stream, reset or timed out before any answer) or that came back
``UNAVAILABLE`` (a draining service) before any response message, when its request is still
held (up to ``max_body_bytes``). The answer's headers are held until its first message or its
trailers, so that such a retry is invisible to the client. The deadline is the client's
``grpc-timeout`` (capped by ``max_request_timeout``; ``request_timeout`` without one); each try
forwards its own remaining budget as ``grpc-timeout``, and the per-try timeout runs until the
backend's answer starts.

Flow control: request bytes are acknowledged to the client once sent on to the backend, answer
bytes to the backend once sent on to the client; each side holds at most a stream window.
"""

from __future__ import annotations

import asyncio
import logging
from enum import Enum
from time import monotonic
from typing import TYPE_CHECKING, Protocol

from hpack import NeverIndexedHeaderTuple

from loadbalancer.errors import (
    BadRequest,
    ConnectFailed,
    Overloaded,
    RequestError,
    UpstreamError,
    UpstreamTimeout,
    answer_of,
)
from loadbalancer.grpc_h2 import malformed
from loadbalancer.grpc_upstream import GrpcConnection, GrpcPool, Headers
from loadbalancer.retry import RetryState
from loadbalancer.ticker import INF
from wire import errors as codes
from wire.grpc_status import ERROR_CODE_TRAILER, GrpcStatus, grpc_status

if TYPE_CHECKING:
    from loadbalancer.proxy import Proxy

__all__ = ["ClientStream", "GrpcCall", "UpstreamUnavailable", "grpc_timeout", "parse_timeout"]

log = logging.getLogger("loadbalancer.grpc")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# Not forwarded as the client sent them: the deadline (each try sends its own) and :scheme (the
# backend's: https over TLS, http over h2c, whatever the client's connection was).
_DROPPED = {b"grpc-timeout", b":scheme", b"connection", b"keep-alive", b"proxy-connection",
            b"upgrade", b"transfer-encoding", b"host"}


class UpstreamUnavailable(UpstreamError):
    """The backend answered ``UNAVAILABLE`` before any message (draining, say): another may not."""

    outlier = False
    kind = "unavailable"


class ClientStream(Protocol):
    """The client's HTTP/2 connection, as a call needs it."""

    def send_headers(self, stream_id: int, headers: Headers, end: bool) -> None: ...

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int: ...

    def ack(self, stream_id: int, length: int) -> None: ...

    def reset(self, stream_id: int) -> None: ...

    def call_done(self, call: GrpcCall) -> None: ...


class Phase(Enum):
    ATTEMPT = "attempt"
    WAIT = "wait"  # for a retry-budget slot
    STREAM = "stream"  # the answer has begun reaching the client: no more retries
    DONE = "done"


def parse_timeout(value: bytes | None) -> float | None:
    """``grpc-timeout`` (``100m``, ``5S``…) in seconds; None when absent or malformed."""
    if not value or len(value) > 9 or value[-1:] not in _UNITS or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * _UNITS[value[-1:]]


def grpc_timeout(seconds: float) -> bytes:
    """Seconds as ``grpc-timeout`` (milliseconds, at least 1)."""
    return b"%dm" % max(1, int(seconds * 1000))


class GrpcCall:
    def __init__(self, proxy: Proxy, pools: dict[str, GrpcPool], client: ClientStream,
                 stream_id: int, headers: Headers) -> None:
        self.proxy, self.pools, self.client, self.stream_id = proxy, pools, client, stream_id
        self.started = monotonic()
        self.timeout = parse_timeout(_get(headers, b"grpc-timeout"))
        self.headers = [(k, v) for k, v in headers if k not in _DROPPED]
        self.malformed = malformed(headers)
        self.retry = RetryState(proxy, self)
        self.phase = Phase.ATTEMPT
        self.timer_at = INF
        self.log: list[bytes] | None = []  # the request so far, for a retry; None past the limit
        self.logged = 0
        self.pending = bytearray()  # request bytes not yet sent on
        self.unacked = 0  # request bytes received from the client, not yet acknowledged
        self.request_ended = False
        self.upstream_ended = False
        self.up: GrpcConnection | None = None
        self.up_stream = 0
        self.connecting: asyncio.Task[GrpcConnection] | None = None
        self.held: Headers | None = None  # the answer's headers, until its first message
        self.answer = bytearray()  # answer bytes not yet sent on to the client
        self.answer_unacked = 0
        self.trailers: Headers | None = None
        self.status = GrpcStatus.OK
        self.done = False

    # -- start and attempts ----------------------------------------------------------------------
    def start(self) -> None:
        proxy = self.proxy
        refused: RequestError | None = None
        if self.malformed:  # not passed on: h2 leaves checking them to us (grpc_h2)
            refused = BadRequest("a header's name or value is not allowed in HTTP/2")
        elif proxy.stats.active >= proxy.max_inflight:
            refused = Overloaded("the load balancer has too many calls in flight")
        if refused is not None:
            self.done = True
            self._answer_error(refused)
            self.client.call_done(self)
            return
        proxy.stats.active += 1
        timeout = proxy.default_timeout if self.timeout is None else \
            min(self.timeout, proxy.max_timeout)
        key = None
        if proxy.cluster.policy.uses_key:
            key = _get(self.headers, proxy.settings.hash_header.encode())
        self.retry.begin(self.started + timeout, key)
        self.attempt()

    def attempt(self) -> None:
        backend = self.retry.next()
        if backend is None:
            self.phase = Phase.WAIT
            return
        if isinstance(backend, RequestError):
            return self.fail(backend)
        self.phase = Phase.ATTEMPT
        pool = self.pools.get(backend.id)
        if pool is None:
            return self._attempt_failed(ConnectFailed("the backend has no connections"))
        conn = pool.take()
        if conn is not None:
            return self._send(conn)
        task = self.proxy.loop.create_task(pool.acquire())
        self.connecting = task
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[GrpcConnection]) -> None:
        if task is not self.connecting:
            if not task.cancelled():
                task.exception()  # retrieved: the call moved on
            return
        self.connecting = None
        if task.cancelled():
            return self._attempt_failed(ConnectFailed("connect cancelled"))
        error = task.exception()
        if error is None:
            return self._send(task.result())
        self._attempt_failed(error if isinstance(error, UpstreamError)
                             else ConnectFailed(f"cannot connect: {error!r}"))

    def _send(self, conn: GrpcConnection) -> None:
        backend = self.retry.backend
        assert backend is not None
        remaining = self.retry.try_deadline - monotonic()
        # the timeout differs from call to call: kept out of HPACK's table (grpc_h2)
        headers = [(b":scheme", conn.pool.scheme), *self.headers,
                   NeverIndexedHeaderTuple(b"grpc-timeout", grpc_timeout(remaining))]
        if self.log is not None and self.retry.tried[0] is not backend:
            self.pending = bytearray(b"".join(self.log))  # a retry: the request from the start
        self.upstream_ended = False
        self.up = conn
        self.up_stream = conn.open(headers, self)
        self.on_writable()

    def _attempt_failed(self, error: UpstreamError) -> None:
        self._drop_upstream()
        if self.retry.backend is None:
            return
        replayable = self.log is not None
        if self.retry.failed(error) and replayable:
            return self.attempt()
        self.fail(error)

    # -- the client's side ----------------------------------------------------------------------
    def on_request_data(self, data: bytes, flow: int, end: bool) -> None:
        if self.log is not None:
            self.logged += len(data)
            if self.logged > self.proxy.settings.max_body_bytes:
                self.log = None  # too long to hold: no retry once some of it has gone
            else:
                self.log.append(data)
        self.unacked += flow
        self.request_ended = self.request_ended or end
        if self.pending or self.up is None or self.upstream_ended:
            self.pending += data
            return self.on_writable()
        self._forward(data)  # straight on, the usual case

    def on_request_end(self) -> None:
        self.request_ended = True
        self.on_writable()

    def on_client_writable(self) -> None:
        self._pump_answer()

    def cancel(self) -> None:
        """The client reset the stream or went away."""
        if self.done:
            return
        self._drop_upstream()
        self.retry.end_attempt()
        self.status = GrpcStatus.CANCELLED
        self._finish()

    # -- StreamReceiver: the backend's side ------------------------------------------------------
    def on_writable(self) -> None:
        """Sends on what the backend's window allows of the request."""
        if self.up is None or self.upstream_ended or not (self.pending or self.request_ended):
            return  # nothing to send (a window opened for other calls, say)
        pending, self.pending = self.pending, bytearray()
        self._forward(bytes(pending))

    def _forward(self, data: bytes) -> None:
        """Sends ``data`` on (nothing is pending before it), keeping what the window refuses."""
        assert self.up is not None
        sent = self.up.send(self.up_stream, data, self.request_ended)
        if sent < len(data):
            self.pending += memoryview(data)[sent:]
            return
        self.upstream_ended = self.request_ended
        if self.unacked:
            self.client.ack(self.stream_id, self.unacked)
            self.unacked = 0

    def on_headers(self, headers: Headers, end: bool) -> None:
        backend = self.retry.backend
        if backend is not None:
            now = monotonic()
            backend.observe_latency(now - self.retry.sent_at, now)
            self.proxy.head_latency.record(now - self.retry.sent_at)
        if end:  # trailers only: an answer without messages
            return self.on_trailers(headers)
        self.held = [*headers, (b"x-upstream", backend.id_bytes if backend else b"")]
        self.proxy.ticker.disarm(self)  # the answer has started: no per-try timeout now

    def on_data(self, data: bytes, flow: int, end: bool) -> None:
        self._begin_answer()
        self.answer_unacked += flow
        if self.answer:
            self.answer += data
        else:  # straight on, the usual case
            sent = self.client.send_data(self.stream_id, data)
            self.answer += memoryview(data)[sent:]
        self._pump_answer()

    def on_trailers(self, headers: Headers) -> None:
        status = _status(headers)
        if status == GrpcStatus.UNAVAILABLE and self.phase is not Phase.STREAM:
            # no message reached the client: another backend may take the call
            return self._attempt_failed(UpstreamUnavailable(_message(headers)))
        self.status = status
        backend = self.retry.backend
        if backend is not None and status not in (GrpcStatus.INTERNAL, GrpcStatus.UNKNOWN):
            backend.record_success()
        self.retry.end_attempt()
        if self.phase is not Phase.STREAM and self.held is None:
            self.phase = Phase.STREAM
            self.client.send_headers(self.stream_id, list(headers), True)  # trailers only
            return self._finish()
        self._begin_answer()
        self.trailers = list(headers)
        self._pump_answer()

    def on_failed(self, error: UpstreamError, unprocessed: bool) -> None:
        self.up = None
        if self.phase is Phase.STREAM or self.phase is Phase.DONE:
            self.retry.end_attempt()
            self.client.reset(self.stream_id)  # an answer has begun: all we can do is cut it
            self.status = GrpcStatus.UNAVAILABLE
            return self._finish()
        self.held = None
        self._attempt_failed(error)

    # -- the answer ------------------------------------------------------------------------------
    def _begin_answer(self) -> None:
        if self.phase is Phase.STREAM:
            return
        self.phase = Phase.STREAM
        self.log = None  # nothing to replay any more
        self.client.send_headers(self.stream_id, self.held or [(b":status", b"200")], False)
        self.held = None

    def _pump_answer(self) -> None:
        if self.phase is not Phase.STREAM:
            return
        if self.answer:
            sent = self.client.send_data(self.stream_id, memoryview(self.answer))
            del self.answer[:sent]
        if not self.answer:
            if self.answer_unacked and self.up is not None:
                self.up.ack(self.up_stream, self.answer_unacked)
            self.answer_unacked = 0
            if self.trailers is not None:
                self.client.send_headers(self.stream_id, self.trailers, True)
                self._finish()

    # -- time and endings ------------------------------------------------------------------------
    def on_timer(self) -> None:
        if self.phase is Phase.ATTEMPT:
            connecting, self.connecting = self.connecting, None
            if connecting is not None:
                connecting.cancel()
            self._attempt_failed(UpstreamTimeout("no answer within the per-try timeout"))

    def fail(self, error: RequestError | UpstreamError) -> None:
        if self.phase is Phase.STREAM:
            self.client.reset(self.stream_id)
        else:
            self._answer_error(error)
        log.warning("gRPC call failed", extra={"attempts": len(self.retry.tried), "error": str(error)})
        self._finish()

    def _answer_error(self, error: RequestError | UpstreamError) -> None:
        _, code = answer_of(error)
        row = codes.ERRORS.get(code, codes.BAD_GATEWAY)
        status = grpc_status(row)
        if isinstance(error, UpstreamError) and not isinstance(error, UpstreamUnavailable):
            status = GrpcStatus.UNAVAILABLE  # never reached a backend that could answer
        self.status = status
        self.client.send_headers(self.stream_id, [
            (b":status", b"200"), (b"content-type", b"application/grpc"),
            (b"grpc-status", b"%d" % status), (b"grpc-message", _percent(str(error))),
            (ERROR_CODE_TRAILER.encode(), row.code.encode())], True)

    def _drop_upstream(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            up.reset(self.up_stream)
        connecting, self.connecting = self.connecting, None
        if connecting is not None:
            connecting.cancel()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.phase = Phase.DONE
        proxy = self.proxy
        proxy.ticker.disarm(self)
        was_active = self.retry.active
        self.retry.finish()
        if was_active:
            proxy.stats.active -= 1
            proxy.stats.count_response(int(self.status), monotonic() - self.started)
            if proxy.idle is not None and proxy.stats.active == 0:
                proxy.idle.set()
        self.client.call_done(self)


def _get(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _status(headers: Headers) -> GrpcStatus:
    raw = _get(headers, b"grpc-status")
    try:
        return GrpcStatus(int(raw)) if raw is not None else GrpcStatus.UNKNOWN
    except ValueError:
        return GrpcStatus.UNKNOWN


def _message(headers: Headers) -> str:
    raw = _get(headers, b"grpc-message")
    return raw.decode("latin-1") if raw else "UNAVAILABLE"


def _percent(text: str) -> bytes:
    """``grpc-message`` is percent-encoded."""
    out = bytearray()
    for byte in text.encode():
        out += bytes([byte]) if 0x20 <= byte < 0x7F and byte != 0x25 else b"%%%02X" % byte
    return bytes(out)

"""HTTP/2 connections to gRPC backends, with the ``h2`` library: cleartext (h2c), or over TLS
for an ``https://`` backend (ALPN ``h2``, its certificate checked against ``--upstream-ca`` and
the name it is known by, mutual TLS with ``--upstream-cert``; :mod:`loadbalancer.tls`). Each
connection carries many calls at once, one HTTP/2 stream each, and a backend has a few of them
(:class:`GrpcPool`).

A stream's events go to its :class:`StreamReceiver` (a call being proxied, or a health probe).
Received DATA is acknowledged (the flow-control window reopened) only when the receiver says so
(``ack``): a proxied call acknowledges what it has passed on to its client, so a slow client
holds at most one stream window of a backend's answer here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import Protocol

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame

from loadbalancer.errors import ConnectFailed, TlsFailed, UpstreamError, UpstreamReset
from loadbalancer.grpc_h2 import H2Protocol, new_connection, send_data
from loadbalancer.tls import Reloading, failure_reason

__all__ = ["STREAM_WINDOW", "GrpcConnection", "GrpcPool", "Headers", "StreamReceiver"]

log = logging.getLogger("loadbalancer.grpc")
Headers = Sequence[tuple[bytes, bytes]]
STREAM_WINDOW = 1 << 20  # bytes of one stream in flight each way, unacknowledged
CONNECTION_WINDOW = 16 << 20
# Frames stay at HTTP/2's default 16 KiB: h2 checks a read's frames against the limit it had when
# the read began, so a peer that acknowledged a larger limit and sent a large frame in the same
# segment would be answered with FRAME_SIZE_ERROR (seen under load with 250 kB messages).


class StreamReceiver(Protocol):
    def on_headers(self, headers: Headers, end: bool) -> None: ...

    def on_data(self, data: bytes, flow: int, end: bool) -> None: ...

    def on_trailers(self, headers: Headers) -> None: ...

    def on_failed(self, error: UpstreamError, unprocessed: bool) -> None:
        """The stream broke; ``unprocessed``: the backend says it never handled it (refused,
        or above a GOAWAY's last stream)."""
        ...

    def on_writable(self) -> None:
        """The backend opened its window: more of the request may go."""
        ...


def h2_settings() -> dict[int, int]:
    return {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0}


class GrpcConnection(H2Protocol):
    """One h2c connection to a backend (client side)."""

    def __init__(self, pool: GrpcPool) -> None:
        super().__init__(new_connection(client_side=True))
        self.pool = pool
        self.receivers: dict[int, StreamReceiver] = {}
        self.closed = False
        self.going_away = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbound = bytearray()  # bytes of a frame not wholly received yet

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.h2.initiate_connection()
        self.h2.update_settings(h2_settings())
        self.h2.increment_flow_control_window(CONNECTION_WINDOW)
        self.flush()
        if not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(self._without_goaway(data))
        except h2.exceptions.ProtocolError as exc:
            self._fail_all(UpstreamReset(f"HTTP/2 protocol error: {exc}"), unprocessed=False)
            self.close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.lost(self)
        reason = "the backend closed the connection" + (f": {exc!r}" if exc is not None else "")
        self._fail_all(UpstreamReset(reason), unprocessed=False)

    def _without_goaway(self, data: bytes) -> bytes:
        """``data`` less its GOAWAY frames, which are handled here: ``h2`` closes the whole
        connection on one, while a server that drains (grpc's two-phase GOAWAY) goes on
        answering the streams it took, and pings. Whole frames only: the rest waits."""
        if self._inbound:
            self._inbound += data
            data = bytes(self._inbound)
            self._inbound.clear()
        at, end, goaway = 0, len(data), False
        while end - at >= 9:  # the frame header: length (3 bytes), type, flags, stream id
            length = (data[at] << 16) | (data[at + 1] << 8) | data[at + 2]
            if end - at < 9 + length:
                break
            goaway = goaway or data[at + 3] == GoAwayFrame.type
            at += 9 + length
        if at < end:
            self._inbound += data[at:]
            data = data[:at]
        return self._goaways_taken(data) if goaway else data

    def _goaways_taken(self, data: bytes) -> bytes:
        at, keep = 0, bytearray()
        while at < len(data):
            length = int.from_bytes(data[at:at + 3], "big")
            if data[at + 3] == GoAwayFrame.type:
                frame = GoAwayFrame(0)
                frame.parse_body(memoryview(data)[at + 9:at + 9 + length])
                self._went_away(frame.last_stream_id)
            else:
                keep += data[at:at + 9 + length]
            at += 9 + length
        return bytes(keep)

    def _went_away(self, last: int) -> None:
        self.going_away = True
        for stream_id in [s for s in self.receivers if s > last]:
            self.receivers.pop(stream_id).on_failed(
                UpstreamReset("the backend went away (GOAWAY) before the call"), True)

    # -- events ---------------------------------------------------------------------------------
    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            receiver = self.receivers.get(event.stream_id)
            if receiver is not None:
                receiver.on_headers(event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            receiver = self.receivers.get(event.stream_id)
            if receiver is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                receiver.on_data(event.data, event.flow_controlled_length,
                                 event.stream_ended is not None)
        elif isinstance(event, h2.events.TrailersReceived):
            receiver = self.receivers.pop(event.stream_id, None)
            if receiver is not None:
                receiver.on_trailers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            self.receivers.pop(event.stream_id, None)
        elif isinstance(event, h2.events.StreamReset):
            receiver = self.receivers.pop(event.stream_id, None)
            if receiver is not None:
                refused = event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                receiver.on_failed(UpstreamReset(f"the backend reset the stream ({event.error_code!r})"),
                                   refused)
        elif isinstance(event, h2.events.WindowUpdated):
            targets = list(self.receivers.values()) if event.stream_id == 0 else \
                [r for r in (self.receivers.get(event.stream_id),) if r is not None]
            for receiver in targets:
                receiver.on_writable()
        elif isinstance(event, h2.events.ConnectionTerminated):  # not reached: see above
            self._went_away(event.last_stream_id or 0)

    def _fail_all(self, error: UpstreamError, *, unprocessed: bool) -> None:
        receivers, self.receivers = self.receivers, {}
        for receiver in receivers.values():
            receiver.on_failed(error, unprocessed)

    # -- what calls do ---------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        if self.closed or self.going_away:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams
        # h2 counts the open streams by a walk over all it holds: only when they might be many
        return len(self.h2.streams) < limit or self.h2.open_outbound_streams < limit

    def open(self, headers: Headers, receiver: StreamReceiver, end: bool = False) -> int:
        stream_id: int = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream=end)
        self.receivers[stream_id] = receiver
        self.write_soon()
        return stream_id

    def send(self, stream_id: int, data: bytes | memoryview, end: bool) -> int:
        """Sends what the windows allow of ``data`` (and END_STREAM once all of it went);
        returns the bytes sent."""
        try:
            sent = send_data(self.h2, stream_id, data, end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return len(data)  # the stream is gone: its failure comes as an event
        self.write_soon()
        return sent

    def ack(self, stream_id: int, length: int) -> None:
        if length and not self.closed:
            try:
                self.h2.acknowledge_received_data(length, stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                self.h2.increment_flow_control_window(length)  # the connection's share only
            self.write_soon()

    def reset(self, stream_id: int) -> None:
        self.receivers.pop(stream_id, None)
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return
        self.write_soon()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            try:
                self.h2.close_connection()
                self.flush()
            except h2.exceptions.ProtocolError:
                pass
            self.transport.close()


class GrpcPool:
    """A backend's HTTP/2 connections: calls share one until it is full (the backend's
    ``MAX_CONCURRENT_STREAMS``), then another opens, up to ``max_connections``. With ``tls``
    (an ``https://`` backend) they are made over TLS, the certificate checked against
    ``server_name`` (the host or IP address by default)."""

    def __init__(self, host: str, port: int, *, max_connections: int, connect_timeout: float,
                 tls: Reloading | None = None, server_name: str | None = None) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.tls = tls
        self.server_name = (server_name or host) if tls is not None else None
        self.scheme = b"https" if tls is not None else b"http"  # the calls' :scheme
        self.tls_error: str | None = None  # the last handshake failure, until one succeeds
        self.connections: list[GrpcConnection] = []
        self._connecting: asyncio.Task[GrpcConnection] | None = None
        self.closed = False

    def take(self) -> GrpcConnection | None:
        """A connection with room for a stream now, if any."""
        for conn in self.connections:
            if conn.available:
                return conn
        return None

    async def acquire(self) -> GrpcConnection:
        """A connection with room, opening one when none has (one connect at a time)."""
        conn = self.take()
        if conn is not None:
            return conn
        if self.closed:
            raise ConnectFailed("the backend was removed")
        if len(self.connections) >= self.max_connections:
            raise ConnectFailed("every connection to the backend is full")
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> GrpcConnection:
        loop = asyncio.get_running_loop()
        context = self.tls.current if self.tls is not None else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: GrpcConnection(self),
                                                       self.host, self.port, ssl=context,
                                                       server_hostname=self.server_name)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise self.tls_failed(exc) from exc
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        self.tls_error = None
        self.connections.append(conn)
        return conn

    def tls_failed(self, exc: Exception) -> TlsFailed:
        """The error for a failed handshake, logged once per reason (not once per call)."""
        reason = failure_reason(exc)
        if reason != self.tls_error:
            self.tls_error = reason
            log.warning("TLS to a gRPC backend failed; it is not used while this lasts",
                        extra={"backend": f"{self.host}:{self.port}", "server_name": self.server_name,
                               "reason": reason, "error": str(exc)})
        return TlsFailed(f"TLS to {self.host}:{self.port} failed: {reason}")

    def lost(self, conn: GrpcConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)

    def close(self) -> None:
        """Closes every connection (their calls fail; a removed backend's calls are drained
        before this by the cluster)."""
        self.closed = True
        for conn in list(self.connections):
            conn.close()

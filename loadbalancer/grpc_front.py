"""The balancer's gRPC side: HTTP/2 on ``--grpc-port`` (h2c, or TLS with ALPN ``h2`` when
``--tls-cert`` is given: the proxy port's certificate, reloaded alike, and its client CA), each
call (HTTP/2 stream) routed on its own by the policy over the gRPC backends (``--grpc-backend``,
``--discover-grpc``; ``https://`` ones over TLS), which have their own cluster, health checks
(``grpc.health.v1``), pools and totals; retries, the retry budget and the policies are the HTTP
side's code (:mod:`loadbalancer.grpc_call`).

:class:`GrpcDownstream` is one client connection (server side of ``h2``); :class:`GrpcFront`
owns the rest and its lifecycle: ``start``, then ``aclose`` (stop listening, GOAWAY to clients,
calls in flight finish within the shutdown timeout, then everything closes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from loadbalancer.backend import Backend, Tuning
from loadbalancer.cluster import Cluster
from loadbalancer.discovery import Discovery, DnsResolver
from loadbalancer.grpc_call import GrpcCall
from loadbalancer.grpc_h2 import H2Protocol, new_connection, send_data
from loadbalancer.grpc_health import GrpcHealthChecker
from loadbalancer.grpc_upstream import CONNECTION_WINDOW, GrpcPool, Headers, h2_settings
from loadbalancer.policies import make_policy
from loadbalancer.proxy import Proxy
from loadbalancer.settings import LBSettings
from loadbalancer.stats import ProxyStats
from loadbalancer.tls import Reloading, listening_context

__all__ = ["GrpcDownstream", "GrpcFront", "H2Server", "Stream"]

log = logging.getLogger("loadbalancer.grpc")
MAX_STREAMS = 1024  # calls of one client connection at once


class Stream(Protocol):
    """One stream of a client's HTTP/2 connection, as the connection drives it: a gRPC call
    (:class:`GrpcCall`), or an HTTP request on the proxy port (:mod:`loadbalancer.h2_downstream`)."""

    stream_id: int

    def start(self) -> None: ...

    def on_request_data(self, data: bytes, flow: int, end: bool) -> None: ...

    def on_request_end(self) -> None: ...

    def on_client_writable(self) -> None: ...

    def cancel(self) -> None: ...


class H2Server(H2Protocol):
    """A client's HTTP/2 connection (the server side of ``h2``): its events drive a
    :class:`Stream` per request, which :meth:`open_stream` makes."""

    def __init__(self) -> None:
        super().__init__(new_connection(client_side=False))
        self.calls: dict[int, Stream] = {}

    def open_stream(self, stream_id: int, headers: Headers) -> Stream:
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.h2.initiate_connection()
        self.h2.update_settings({**h2_settings(),
                                 h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
        self.h2.increment_flow_control_window(CONNECTION_WINDOW)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            call = self.open_stream(event.stream_id, event.headers)
            self.calls[event.stream_id] = call
            call.start()
            if event.stream_ended is not None and event.stream_id in self.calls:
                call.on_request_end()
        elif isinstance(event, h2.events.DataReceived):
            found = self.calls.get(event.stream_id)
            if found is None:
                self.ack(event.stream_id, event.flow_controlled_length)
            else:
                found.on_request_data(event.data, event.flow_controlled_length,
                                      event.stream_ended is not None)
        elif isinstance(event, h2.events.StreamEnded):
            found = self.calls.get(event.stream_id)
            if found is not None:
                found.on_request_end()
        elif isinstance(event, h2.events.StreamReset):
            found = self.calls.pop(event.stream_id, None)
            if found is not None:
                found.cancel()
        elif isinstance(event, h2.events.WindowUpdated):
            targets = list(self.calls.values()) if event.stream_id == 0 else \
                [c for c in (self.calls.get(event.stream_id),) if c is not None]
            for target in targets:
                target.on_client_writable()
        elif isinstance(event, h2.events.ConnectionTerminated) and self.transport is not None:
            self.transport.close()

    # -- ClientStream ---------------------------------------------------------------------------
    def send_headers(self, stream_id: int, headers: Headers, end: bool) -> None:
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.write_soon()

    def send_data(self, stream_id: int, data: bytes | memoryview, end: bool = False) -> int:
        """Sends what the windows allow of ``data`` (END_STREAM after it when ``end`` and all of
        it went); returns the bytes sent."""
        try:
            sent = send_data(self.h2, stream_id, data, end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return len(data)  # the client is gone: its reset comes as an event
        self.write_soon()
        return sent

    def ack(self, stream_id: int, length: int) -> None:
        if not length:
            return
        try:
            self.h2.acknowledge_received_data(length, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            self.h2.increment_flow_control_window(length)
        self.write_soon()

    def reset(self, stream_id: int, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        try:
            self.h2.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            return
        self.write_soon()

    def refuse(self, stream_id: int) -> None:
        """``REFUSED_STREAM``: the stream was not processed at all."""
        self.reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)

    def call_done(self, call: Stream) -> None:
        self.calls.pop(call.stream_id, None)

    def goaway(self) -> None:
        """Shutdown: no new calls on this connection; those in flight finish."""
        try:
            self.h2.close_connection()
        except h2.exceptions.ProtocolError:
            return
        self.flush()
        if not self.calls and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class GrpcDownstream(H2Server):
    """One client's connection to the gRPC port: a :class:`GrpcCall` per stream."""

    def __init__(self, front: GrpcFront) -> None:
        super().__init__()
        self.front = front

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.front.connections.add(self)
        self.front.stats.client_connections += 1
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self.front.stats.client_connections -= 1
        super().connection_lost(exc)

    def open_stream(self, stream_id: int, headers: Headers) -> Stream:
        return self.front.call(self, stream_id, headers)


class _Pools:
    """Cluster watcher: an HTTP/2 pool per gRPC backend (over ``tls`` for an ``https://`` one),
    closed when it leaves."""

    def __init__(self, settings: LBSettings, pools: dict[str, GrpcPool], tls: Reloading) -> None:
        self.settings, self.pools, self.tls = settings, pools, tls

    def added(self, backend: Backend) -> None:
        self.pools[backend.id] = GrpcPool(
            backend.host, backend.port, max_connections=self.settings.grpc_connections_per_backend,
            connect_timeout=self.settings.connect_timeout,
            tls=self.tls if backend.tls else None, server_name=backend.server_name)

    def removed(self, backend: Backend) -> None:
        pool = self.pools.pop(backend.id, None)
        if pool is not None:
            pool.close()


class GrpcFront:
    """``tls``: the port's TLS (None: h2c); ``upstream_tls``: the context of ``https://``
    backends (ALPN ``h2``)."""

    def __init__(self, settings: LBSettings, *, upstream_tls: Reloading,
                 tls: Reloading | None = None) -> None:
        s = self.settings = settings
        self.tls, self.upstream_tls = tls, upstream_tls
        self.stats = ProxyStats()
        self.cluster = Cluster(make_policy(s.policy), Tuning.from_settings(s),
                               panic_threshold=s.panic_threshold,
                               max_ejection_percent=s.outlier_max_ejection_percent)
        self.pools: dict[str, GrpcPool] = {}
        self.discovery: Discovery | None = None
        if s.discover_grpc:
            self.discovery = Discovery(self.cluster, s.discover_grpc,
                                       DnsResolver(s.dns_server, s.dns_timeout),
                                       min_ttl=s.dns_min_ttl, max_ttl=s.dns_max_ttl)
        self.connections: set[GrpcDownstream] = set()
        self.port = 0
        self.proxy: Proxy | None = None
        self._server: asyncio.Server | None = None
        self._health: GrpcHealthChecker | None = None

    def call(self, client: H2Server, stream_id: int, headers: Headers) -> GrpcCall:
        """A call of ``client``'s, on this side's backends (the gRPC port's, or one that came to
        the proxy port over HTTP/2)."""
        assert self.proxy is not None  # started before any port opens
        return GrpcCall(self.proxy, self.pools, client, stream_id, headers)

    async def start(self) -> None:
        s = self.settings
        assert s.grpc_port is not None
        self.cluster.watchers.append(_Pools(s, self.pools, self.upstream_tls))
        for spec in s.grpc_backends:
            self.cluster.add(spec, time.monotonic(), warm=True)
        self.proxy = Proxy(s, self.cluster, self.stats)
        self._health = GrpcHealthChecker(self.cluster, self.pools, interval=s.health_interval,
                                         jitter=s.health_jitter, timeout=s.health_timeout)
        self._health.start()
        if self.discovery is not None:
            await self.discovery.start()
        tls = listening_context(self.tls) if self.tls is not None else None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GrpcDownstream(self), s.host, s.grpc_port, backlog=1024, reuse_address=True,
            ssl=tls, ssl_handshake_timeout=s.client_request_timeout if tls is not None else None)
        self.port = self._server.sockets[0].getsockname()[1]

    async def aclose(self, within: float) -> None:
        # 1. Stop accepting; 2. GOAWAY: clients send no new calls here
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.goaway()
        # 3. Drain: the calls in flight finish, within the timeout
        if self.proxy is not None:
            await self.proxy.wait_idle(within)
        # 4. Cut what is left and close the rest
        for conn in list(self.connections):
            conn.abort()
        if self.proxy is not None:
            self.proxy.close()
        if self.discovery is not None:
            await self.discovery.aclose()
        if self._health is not None:
            await self._health.aclose()
        for pool in self.pools.values():
            pool.close()

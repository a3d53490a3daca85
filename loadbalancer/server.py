"""The load balancer as one object with an explicit lifecycle, and ``run`` for the CLI.

``async with LoadBalancer(settings) as lb:`` starts the proxy port, the admin port, the pools,
the health checks and DNS discovery; leaving it shuts down gracefully. Signals only set events.
With TLS configured, a background task checks the certificate files every
``tls_reload_interval`` seconds and reloads those that changed (``loadbalancer.tls``): the proxy
port's, the gRPC port's (the same files), the admin port's and the backends'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from enum import Enum
from types import TracebackType

from aiohttp import web

from loadbalancer.admin import create_admin_app
from loadbalancer.backend import Backend, Tuning
from loadbalancer.cluster import Cluster
from loadbalancer.discovery import Discovery, DnsResolver
from loadbalancer.downstream import ClientConnection
from loadbalancer.errors import ConfigError, LoadBalancerError
from loadbalancer.grpc_front import GrpcFront
from loadbalancer.grpc_metrics import GrpcCollector
from loadbalancer.h2_downstream import H2Downstream
from loadbalancer.health import HealthChecker
from loadbalancer.metrics import TlsCollector, make_registry
from loadbalancer.policies import make_policy
from loadbalancer.proxy import Proxy
from loadbalancer.settings import LBSettings, load_config_file, parse_backends, parse_discover
from loadbalancer.stats import ProxyStats
from loadbalancer.tls import (
    ALPN,
    H2_ALPN,
    PROXY_ALPN,
    Reloading,
    client_context,
    listening_context,
    server_context,
)
from loadbalancer.upstream import UpstreamPool
from wire.logs import configure_logging

__all__ = ["LoadBalancer", "State", "run", "serve_until_signalled"]

log = logging.getLogger("loadbalancer")
SWEEP_INTERVAL = 1.0


class State(Enum):
    CREATED = "created"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Pools:
    """Cluster watcher: a connection pool per backend, closed when it leaves."""

    def __init__(self, settings: LBSettings, upstream_tls: Reloading) -> None:
        self.settings = settings
        self.upstream_tls = upstream_tls

    def added(self, backend: Backend) -> None:
        s = self.settings
        backend.pool = UpstreamPool(
            backend.host,
            backend.port,
            max_connections=s.max_connections_per_backend,
            connect_timeout=s.connect_timeout,
            idle_timeout=s.upstream_idle_timeout,
            tls=self.upstream_tls if backend.tls else None,
            server_name=backend.server_name,
        )

    def removed(self, backend: Backend) -> None:
        if backend.pool is not None:
            backend.pool.close()  # idle connections now, busy ones when their answer ends


class LoadBalancer:
    def __init__(self, settings: LBSettings) -> None:
        self.settings = settings
        self.state = State.CREATED
        self.stats = ProxyStats()
        self.cluster = Cluster(
            make_policy(settings.policy),
            Tuning.from_settings(settings),
            panic_threshold=settings.panic_threshold,
            max_ejection_percent=settings.outlier_max_ejection_percent,
        )
        self.discovery: Discovery | None = None
        if settings.discover:
            self.discovery = Discovery(
                self.cluster,
                settings.discover,
                DnsResolver(settings.dns_server, settings.dns_timeout),
                min_ttl=settings.dns_min_ttl,
                max_ttl=settings.dns_max_ttl,
            )
        self.registry = make_registry(self.cluster, self.stats, self.discovery)
        self.contexts = _tls_contexts(settings)
        contexts = self.contexts
        self.registry.register(TlsCollector(contexts))
        self.tls, self.admin_tls = contexts.get("proxy"), contexts.get("admin")
        self.upstream_tls = contexts["upstream"]
        self.grpc: GrpcFront | None = None  # the gRPC side, on --grpc-port
        if settings.grpc_port is not None:
            self.grpc = GrpcFront(settings, tls=contexts.get("grpc"),
                                  upstream_tls=contexts["grpc-upstream"])
            self.registry.register(GrpcCollector(self.grpc.cluster, self.grpc.stats,
                                                 self.grpc.discovery))
        self.port = settings.port
        self.admin_port = settings.admin_port
        self._connections: set[ClientConnection | H2Downstream] = set()
        self._server: asyncio.Server | None = None
        self._admin: web.AppRunner | None = None
        self._health: HealthChecker | None = None
        self._proxy: Proxy | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> LoadBalancer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Backends and their pools, health checks, DNS discovery, then the proxy and admin
        ports."""
        if self.state is not State.CREATED:
            raise LoadBalancerError(f"cannot start a load balancer that is {self.state.value}")
        s = self.settings
        self.cluster.watchers.append(_Pools(s, self.upstream_tls))
        for spec in s.backends:
            self.cluster.add(spec, time.monotonic(), warm=True)
        self._proxy = Proxy(s, self.cluster, self.stats)
        self._health = HealthChecker(
            self.cluster,
            path=s.health_path,
            interval=s.health_interval,
            jitter=s.health_jitter,
            timeout=s.health_timeout,
            tls=self.upstream_tls,
        )
        await self._health.__aenter__()
        try:
            if self.discovery is not None:
                await self.discovery.start()  # the first answers, bounded by dns_timeout
            if self.grpc is not None:  # first: the proxy port passes gRPC calls over HTTP/2 on
                await self.grpc.start()
            await self._start_proxy(self._proxy)
            await self._start_admin()
        except OSError as exc:
            await self.aclose()
            raise ConfigError(f"cannot listen: {exc}") from exc
        self._spawn(self._sweep_pools())
        self._spawn(self._watch_tls())
        self.state = State.RUNNING
        log.info(
            "load balancer listening",
            extra={
                "proxy": f"{'https' if self.tls else 'http'}://{s.host}:{self.port}",
                "admin": f"{s.admin_host}:{self.admin_port}",
                "policy": s.policy,
                "backends": [b.url for b in s.backends],
                "discover": [d.url for d in s.discover],
                "grpc": None if self.grpc is None else
                f"{'grpcs' if self.grpc.tls else 'grpc'}://{s.host}:{self.grpc.port}",
            },
        )

    async def _start_proxy(self, proxy: Proxy) -> None:
        s = self.settings
        connections, grpc = self._connections, self.grpc

        def h2() -> H2Downstream:
            return H2Downstream(proxy, connections, grpc)

        http2 = h2 if self.tls is not None and s.http2 else None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: ClientConnection(proxy, connections, http2),
            s.host,
            s.port,
            backlog=1024,
            reuse_address=True,
            ssl=listening_context(self.tls) if self.tls is not None else None,
            ssl_handshake_timeout=s.client_request_timeout if self.tls is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _start_admin(self) -> None:
        s = self.settings
        token = s.admin_token.get_secret_value() if s.admin_token else None
        app = create_admin_app(self.cluster, self.stats, self.registry, token, self.discovery,
                               grpc_cluster=self.grpc.cluster if self.grpc is not None else None)
        self._admin = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._admin.setup()
        context = listening_context(self.admin_tls) if self.admin_tls is not None else None
        site = web.TCPSite(
            self._admin, s.admin_host, s.admin_port, reuse_address=True, ssl_context=context
        )
        await site.start()
        server = site._server  # aiohttp keeps the listening server private
        if isinstance(server, asyncio.Server) and server.sockets:
            self.admin_port = server.sockets[0].getsockname()[1]

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def _sweep_pools(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = time.monotonic()
            for backend in list(self.cluster.backends.values()):
                if backend.pool is not None:
                    backend.pool.sweep(now)

    async def _watch_tls(self) -> None:
        """Reloads the certificates whose files changed (new connections get them)."""
        watched = [t for t in self.contexts.values() if t.files]
        while watched:
            await asyncio.sleep(self.settings.tls_reload_interval)
            for reloading in watched:
                reloading.check()

    def reload(self) -> bool:
        """SIGHUP: makes the configured backends equal to the config file's ``backends`` (those
        found by DNS stay with their discovery; ``discover`` itself is read at start only)."""
        path = self.settings.config
        if path is None:
            log.warning("reload asked, but no config file is set")
            return False
        try:
            data = load_config_file(path)
            if "discover" in data and parse_discover(data["discover"]) != self.settings.discover:
                log.warning("'discover' changed in the config file: it takes effect at a restart")
            if "backends" not in data:
                raise ConfigError(f"{path} has no 'backends' to reload")
            specs = parse_backends(data["backends"])
        except (ConfigError, ValueError) as exc:
            log.error("reload failed; keeping the current backends", extra={"error": str(exc)})
            return False
        added, removed, updated = self.cluster.reconcile(specs, time.monotonic())
        log.info("reloaded", extra={"added": added, "removed": removed, "updated": updated})
        return True

    async def aclose(self) -> None:
        """Graceful shutdown, in steps, bounded by ``shutdown_timeout``."""
        if self.state in (State.CLOSING, State.CLOSED):
            return
        self.state = State.CLOSING
        # 1. Stop accepting: close the listening socket.
        if self._server is not None:
            self._server.close()
        # 2. Idle keep-alive connections close now; busy ones after their current answer.
        for conn in list(self._connections):
            conn.shutdown()
        # 3. Drain: wait for the requests in flight, at most shutdown_timeout.
        if self._proxy is not None:
            drained = await self._proxy.wait_idle(self.settings.shutdown_timeout)
            log.info("drained" if drained else "drain timed out", extra={"inflight": self.stats.active})
        if self.grpc is not None:  # the gRPC side drains alike (GOAWAY, calls finish)
            await self.grpc.aclose(self.settings.shutdown_timeout)
        # 4. Cut what is left, and stop the background work.
        for conn in list(self._connections):
            conn.abort()
        if self._proxy is not None:
            self._proxy.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.discovery is not None:
            await self.discovery.aclose()
        if self._health is not None:
            await self._health.aclose()
        # 5. Close the pools and the admin API.
        for backend in self.cluster.backends.values():
            if backend.pool is not None:
                backend.pool.close()
        if self._admin is not None:
            await self._admin.cleanup()
        self.state = State.CLOSED
        log.info("load balancer stopped")


def _tls_contexts(s: LBSettings) -> dict[str, Reloading]:
    """Every TLS context the settings ask for, each watched for changes of its files:
    ``proxy`` (HTTPS on the proxy port, ALPN h2 and http/1.1, or http/1.1 alone without
    ``http2``) and ``grpc`` (the gRPC port: the same certificate and client CA, ALPN h2), when a
    certificate is given; ``admin`` (the admin port's own certificate); ``upstream``
    (``https://`` backends, ALPN http/1.1) and, with a gRPC port, ``grpc-upstream`` (the same CA
    and client certificate, ALPN h2)."""
    contexts: dict[str, Reloading] = {}
    if s.tls_cert is not None and s.tls_key is not None:
        cert, key, ca = s.tls_cert, s.tls_key, s.tls_client_ca
        files = [cert, key] if ca is None else [cert, key, ca]
        alpn = PROXY_ALPN if s.http2 else ALPN
        contexts["proxy"] = Reloading("proxy", files, lambda: server_context(cert, key, ca, alpn=alpn))
        if s.grpc_port is not None:
            contexts["grpc"] = Reloading("grpc", files,
                                         lambda: server_context(cert, key, ca, alpn=H2_ALPN))
    if s.admin_tls_cert is not None and s.admin_tls_key is not None:
        admin_cert, admin_key = s.admin_tls_cert, s.admin_tls_key
        contexts["admin"] = Reloading("admin", [admin_cert, admin_key],
                                      lambda: server_context(admin_cert, admin_key))
    upstream_files = [f for f in (s.upstream_ca, s.upstream_cert, s.upstream_key) if f is not None]

    def upstream_build(alpn: tuple[str, ...]) -> Callable[[], ssl.SSLContext]:
        return lambda: client_context(s.upstream_ca, s.upstream_cert, s.upstream_key, alpn=alpn)

    contexts["upstream"] = Reloading("upstream", upstream_files, upstream_build(ALPN))
    if s.grpc_port is not None:
        contexts["grpc-upstream"] = Reloading("grpc-upstream", upstream_files,
                                              upstream_build(H2_ALPN))
    return contexts


async def serve_until_signalled(lb: LoadBalancer) -> None:
    """Runs until SIGTERM/SIGINT; SIGHUP reloads. The handlers only set events."""
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)

    async def reloader() -> None:
        while True:
            await reload.wait()
            reload.clear()
            lb.reload()

    task = loop.create_task(reloader())
    try:
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _main(settings: LBSettings) -> None:
    async with LoadBalancer(settings) as lb:
        await serve_until_signalled(lb)


def run(settings: LBSettings) -> None:
    """Runs the load balancer on uvloop (asyncio where uvloop is missing) until signalled."""
    configure_logging("json", settings.log_level, quiet=("aiohttp",))
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_main(settings))

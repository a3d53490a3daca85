"""WebSocket proxying: the upgrade request goes to a backend chosen by the policy (the stream id
keeps a stream's feed on its backend under ``ring_hash``/``maglev``), and once that backend
answers ``101 Switching Protocols`` the two connections are joined: bytes are piped both ways,
untouched, until either side closes.

Before the 101 the handshake is an ordinary idempotent GET, tried as a request is (the same
:class:`~loadbalancer.retry.RetryState`): a backend that cannot be reached, resets, or gives no
answer head within the per-try timeout is reported to the cluster and the handshake is tried on
the next backend (the next owner on the ring), within the request's deadline, ``max_retries``
and the retry budget; an error that is not retryable (an answer that is not HTTP) ends it with a
502. Any other answer (a 4xx, a 503) is passed back as it is and the client connection closes
after it. Once joined nothing is retried: a side that closes or is cut closes the other. Bounded
by ``max_websockets`` open at once, ``websocket_idle_timeout`` with no byte either way (timed by
the proxy's ticker), and flow control coupled both ways (a slow reader pauses the other side).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from enum import Enum
from time import monotonic
from typing import TYPE_CHECKING, Protocol, cast

from loadbalancer.backend import Backend
from loadbalancer.errors import (
    ConnectFailed,
    Overloaded,
    RequestError,
    UpstreamError,
    UpstreamReset,
    UpstreamTimeout,
    answer_of,
)
from loadbalancer.messages import Request
from loadbalancer.retry import RetryState
from loadbalancer.ticker import INF
from loadbalancer.tunnel_upstream import TunnelUpstream
from wire.headers import REQUEST_TIMEOUT_MS, UPSTREAM

if TYPE_CHECKING:
    from loadbalancer.proxy import Proxy
    from loadbalancer.upstream import UpstreamPool

__all__ = ["Tunnel", "TunnelClient", "is_websocket_upgrade"]

log = logging.getLogger("loadbalancer.tunnel")
_UPSTREAM = UPSTREAM.encode()
_TIMEOUT = REQUEST_TIMEOUT_MS.encode()


def is_websocket_upgrade(method: bytes, upgrade: bytes) -> bool:
    """A GET asking to switch to the WebSocket protocol (RFC 6455 section 4.1)."""
    return method == b"GET" and b"websocket" in upgrade.lower()


class TunnelClient(Protocol):
    """The client connection, as a tunnel needs it."""

    transport: asyncio.Transport | None

    def answer_error(self, request: Request, error: Exception, status: int, code: str) -> None: ...

    def flush(self) -> None: ...

    def tunnel_done(self, tunnel: Tunnel) -> None: ...


class Phase(Enum):
    CONNECT = "connect"  # connecting, or waiting for the handshake's answer head
    OPEN = "open"  # joined: piping bytes
    REJECTED = "rejected"  # passing back a non-101 answer, then closing
    DONE = "done"


class Tunnel:
    """One upgraded client connection, from the upgrade request to the close of either side."""

    def __init__(self, proxy: Proxy, request: Request, client: TunnelClient, early: bytes) -> None:
        self.proxy = proxy
        self.request = request
        self.client = client
        self.phase = Phase.CONNECT
        self.status = 0
        self.retry = RetryState(proxy, self)  # the handshake's tries
        self.upstream: TunnelUpstream | None = None
        self.timer_at = INF  # when on_timer is due; the proxy's ticker checks
        self._early = [early] if early else []  # client bytes read before the 101
        self._pending: asyncio.Task[tuple[asyncio.BaseTransport, TunnelUpstream]] | None = None
        self._last_active = monotonic()

    # -- the handshake -------------------------------------------------------------------------
    def start(self) -> None:
        proxy, request, stats = self.proxy, self.request, self.proxy.stats
        if stats.websockets_active >= proxy.settings.max_websockets:
            stats.count_websocket("refused")
            return self._refuse(Overloaded("the load balancer has too many WebSockets open"))
        stats.websockets_active += 1
        self.retry.start(request)
        self.attempt()

    def attempt(self) -> None:
        """Connects to the next backend the retry state gives, to send it the handshake."""
        backend = self.retry.next()
        if backend is None:  # a retry waits for a budget slot: attempt or fail comes next
            return
        if isinstance(backend, RequestError):
            return self.fail(backend)
        assert backend.pool is not None
        pool = backend.pool
        connect = self._connect(pool)
        task = self.proxy.loop.create_task(connect)
        self._pending = task
        task.add_done_callback(self._connected)

    async def _connect(self, pool: UpstreamPool) -> tuple[asyncio.BaseTransport, TunnelUpstream]:
        """A connection of its own to the pool's backend (over TLS for an https:// one)."""
        limit = self.proxy.settings.max_header_bytes
        within = min(pool.connect_timeout, self.retry.try_deadline - monotonic())
        try:
            async with asyncio.timeout(max(0.001, within)):
                return await self.proxy.loop.create_connection(
                    lambda: TunnelUpstream(self, limit),
                    pool.host,
                    pool.port,
                    ssl=pool.tls_context,
                    server_hostname=pool.server_hostname,
                )
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise pool.tls_failed(exc) from exc

    def _connected(self, task: asyncio.Task[tuple[asyncio.BaseTransport, TunnelUpstream]]) -> None:
        if task is not self._pending:  # given up on meanwhile
            if not task.cancelled() and task.exception() is None:
                cast(asyncio.Transport, task.result()[0]).abort()
            return
        self._pending = None
        error = None if task.cancelled() else task.exception()
        if isinstance(error, UpstreamError):  # a failed TLS handshake
            return self._attempt_failed(error)
        if task.cancelled() or error is not None:
            return self._attempt_failed(ConnectFailed(f"cannot connect: {error!r}"))
        upstream = self.upstream = task.result()[1]
        assert upstream.transport is not None and self.retry.backend is not None
        upstream.transport.write(self._handshake(self.retry.backend))

    def _handshake(self, backend: Backend) -> bytes:
        request = self.request
        remaining_ms = max(int((self.retry.try_deadline - monotonic()) * 1000.0), 1)
        host = b"" if request.has_host else b"host: " + backend.id_bytes + b"\r\n"
        return b"".join(
            (
                request.prefix,
                host,
                _TIMEOUT + b": %d\r\n" % remaining_ms,
                b"connection: upgrade\r\nupgrade: websocket\r\n\r\n",
            )
        )

    def upstream_head(self, status: int, head: bytes) -> None:
        """The backend's answer head, raw; ``X-Upstream`` is added before it goes on."""
        backend = self.retry.backend
        assert backend is not None
        now = monotonic()
        self.retry.end_attempt()
        self.retry.finish()  # the handshake is answered: no more tries
        self.status = status
        self.proxy.stats.count_response(status, now - self.request.started)
        if status >= 500:
            self.proxy.cluster.report_failure(backend, "5xx", now, outlier=True)
        else:
            backend.record_success()
        end = head.rindex(b"\r\n\r\n")
        self._to_client(head[:end] + b"\r\n" + _UPSTREAM + b": " + backend.id_bytes + b"\r\n\r\n")
        if status == 101:
            self.phase = Phase.OPEN
            self.proxy.stats.count_websocket("opened")
            self.proxy.ticker.arm(self, now + self.proxy.settings.websocket_idle_timeout)
            early, self._early = b"".join(self._early), []
            if early:
                self.from_client(early)
        else:
            self.phase = Phase.REJECTED
            self.proxy.stats.count_websocket("rejected")
            self.proxy.ticker.arm(self, now + self.proxy.per_try)

    def _attempt_failed(self, error: UpstreamError) -> None:
        self._drop_upstream()
        if self.retry.failed(error):
            return self.attempt()
        self.fail(error)

    # -- the pipe ------------------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        """Bytes the client sent after its upgrade request."""
        if self.phase is Phase.OPEN:
            upstream = self.upstream
            if upstream is not None and upstream.transport is not None:
                self._last_active = monotonic()
                self.proxy.stats.websocket_bytes_in += len(data)
                upstream.transport.write(data)
        elif self.phase is Phase.CONNECT:
            self._early.append(data)
            if sum(map(len, self._early)) > self.proxy.settings.max_body_bytes:
                self.close()  # a client that will not wait for the 101

    def from_upstream(self, data: bytes) -> None:
        self._last_active = monotonic()
        if self.phase is Phase.OPEN:
            self.proxy.stats.websocket_bytes_out += len(data)
        self._to_client(data)

    def _to_client(self, data: bytes) -> None:
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def upstream_closed(self, error: UpstreamError | None) -> None:
        """The backend closed its side (``error`` before the answer head)."""
        self.upstream = None
        if self.phase is Phase.CONNECT:
            return self._attempt_failed(error or UpstreamReset("closed before answering"))
        self.close()

    def client_closed(self) -> None:
        """The client closed its side (or was cut)."""
        self.close()

    # -- time ----------------------------------------------------------------------------------
    def on_timer(self) -> None:
        """Called by the proxy's ticker once ``timer_at`` has passed: the handshake's per-try
        timeout, the idle timeout, or the end of a refusal's time to finish."""
        if self.phase is Phase.CONNECT:
            pending, self._pending = self._pending, None
            if pending is not None:
                pending.cancel()
            return self._attempt_failed(UpstreamTimeout("no handshake answer within the per-try timeout"))
        if self.phase is Phase.OPEN:
            idle_until = self._last_active + self.proxy.settings.websocket_idle_timeout
            if monotonic() < idle_until:
                return self.proxy.ticker.arm(self, idle_until)
            self.proxy.stats.count_websocket("idle_timeout")
        self.close()  # idle, or a refusal whose body did not end within the per-try timeout

    # -- endings -------------------------------------------------------------------------------
    def _refuse(self, error: RequestError | UpstreamError) -> None:
        status, code = answer_of(error)
        self.status = status
        self.proxy.stats.count_response(status, monotonic() - self.request.started)
        self.client.answer_error(self.request, error, status, code)
        self.client.flush()
        self.phase = Phase.DONE
        self.client.tunnel_done(self)

    def fail(self, error: RequestError | UpstreamError) -> None:
        """The handshake cannot be made (no backend left, or an error no other would mend):
        answered by the balancer, then closed."""
        self.proxy.stats.count_websocket("failed")
        log.warning(
            "websocket handshake failed",
            extra={
                "request_id": self.request.request_id.decode("latin-1"),
                "attempts": len(self.retry.tried),
                "error": str(error),
            },
        )
        self.proxy.stats.websockets_active -= 1
        self.proxy.ticker.disarm(self)
        self.retry.finish()
        self._refuse(error)

    def close(self) -> None:
        """Ends the tunnel: both sides close (what is buffered still goes out)."""
        if self.phase is Phase.DONE:
            return
        self.phase = Phase.DONE
        self.proxy.stats.websockets_active -= 1
        self.proxy.ticker.disarm(self)
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        self.retry.end_attempt()
        self.retry.finish()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.tunnel = None
            if upstream.transport is not None:
                upstream.transport.close()
        self.client.tunnel_done(self)

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.tunnel = None
            if upstream.transport is not None:
                upstream.transport.abort()

    # -- flow control --------------------------------------------------------------------------
    def pause_client(self, paused: bool) -> None:
        """The backend's socket buffer is full (True) or drained: stop or resume the client."""
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            (transport.pause_reading if paused else transport.resume_reading)()

    def pause_upstream(self, paused: bool) -> None:
        """The client's socket buffer is full (True) or drained: stop or resume the backend."""
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None and not upstream.transport.is_closing():
            (upstream.transport.pause_reading if paused else upstream.transport.resume_reading)()

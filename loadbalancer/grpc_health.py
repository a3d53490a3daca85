"""Active health checks of gRPC backends with gRPC's own health protocol: ``grpc.health.v1.
Health/Check`` for the whole server (``""``), over the backend's pooled connections (h2c, or the
same TLS as its calls), one task per backend at the interval with jitter. SERVING -> healthy;
NOT_SERVING (loading, draining) -> draining: no new calls; no answer in time, a refused
connection, a failed handshake or another status -> a failure.
Thresholds and the state machine are :meth:`Backend.apply_probe`'s, as for HTTP backends.

The request and the answer are one-field protobuf messages, written and read here by hand (the
light install of the balancer has no protobuf): ``HealthCheckRequest{}`` is empty, and
``HealthCheckResponse`` is field 1, an enum (``08 01`` SERVING, ``08 02`` NOT_SERVING).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from loadbalancer.backend import Backend, Health
from loadbalancer.cluster import Cluster
from loadbalancer.errors import UpstreamError
from loadbalancer.grpc_upstream import GrpcPool, Headers

__all__ = ["GrpcHealthChecker", "probe"]

log = logging.getLogger("loadbalancer.health")
CHECK_PATH = b"/grpc.health.v1.Health/Check"
_EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"  # uncompressed, length 0
SERVING, NOT_SERVING = 1, 2


class _Probe:
    """A StreamReceiver that collects one unary answer."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.status: bytes | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_headers(self, headers: Headers, end: bool) -> None:
        if end:
            self.on_trailers(headers)

    def on_data(self, data: bytes, flow: int, end: bool) -> None:
        self.body += data

    def on_trailers(self, headers: Headers) -> None:
        self.status = dict(headers).get(b"grpc-status")
        if not self.done.done():
            self.done.set_result(None)

    def on_failed(self, error: UpstreamError, unprocessed: bool) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def on_writable(self) -> None:
        pass


def _serving(message: bytes) -> int:
    """The status field of a HealthCheckResponse (0, UNKNOWN, when absent)."""
    if len(message) >= 2 and message[0] == 0x08:
        return message[1]
    return 0


async def probe(pool: GrpcPool, authority: str, within: float) -> Health:
    """One check; never raises."""
    answer = _Probe()
    conn = None
    stream_id = 0
    try:
        async with asyncio.timeout(within):
            conn = await pool.acquire()
            headers = [(b":method", b"POST"), (b":scheme", pool.scheme), (b":path", CHECK_PATH),
                       (b":authority", authority.encode()), (b"content-type", b"application/grpc"),
                       (b"te", b"trailers")]
            stream_id = conn.open(headers, answer)
            conn.send(stream_id, memoryview(_EMPTY_MESSAGE), True)
            await answer.done
    except (UpstreamError, TimeoutError, OSError) as exc:
        if conn is not None and stream_id:
            conn.reset(stream_id)
        log.debug("gRPC probe failed", extra={"backend": authority, "error": repr(exc)})
        return Health.UNHEALTHY
    if conn is not None:
        conn.ack(stream_id, len(answer.body))
    if answer.status != b"0":
        return Health.UNHEALTHY
    state = _serving(bytes(answer.body[5:]))
    if state == SERVING:
        return Health.HEALTHY
    return Health.DRAINING if state == NOT_SERVING else Health.UNHEALTHY


class GrpcHealthChecker:
    """A Cluster watcher: probes each gRPC backend while it is in the cluster."""

    def __init__(self, cluster: Cluster, pools: dict[str, GrpcPool], *, interval: float,
                 jitter: float, timeout: float) -> None:
        self.cluster, self.pools = cluster, pools
        self.interval, self.jitter, self.timeout = interval, jitter, timeout
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rng = random.Random()

    def start(self) -> None:
        for backend in self.cluster.backends.values():
            self.added(backend)
        self.cluster.watchers.append(self)

    async def aclose(self) -> None:
        if self in self.cluster.watchers:
            self.cluster.watchers.remove(self)
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def added(self, backend: Backend) -> None:
        self._tasks[backend.id] = asyncio.get_running_loop().create_task(self._run(backend))

    def removed(self, backend: Backend) -> None:
        task = self._tasks.pop(backend.id, None)
        if task is not None:
            task.cancel()

    async def _run(self, backend: Backend) -> None:
        while not backend.removed:
            pool = self.pools.get(backend.id)
            if pool is not None:
                observed = await probe(pool, backend.id, self.timeout)
                self.cluster.report_probe(backend, observed, time.monotonic())
            spread = self.interval * self.jitter
            await asyncio.sleep(self.interval + self._rng.uniform(-spread, spread))

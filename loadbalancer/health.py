"""Active health checks: ``GET /health/ready`` on every backend, one task per backend, at an
interval with jitter. 200 ready -> healthy; 503 with ``{"status": "starting"|"draining"|
"overloaded"}`` -> that state; anything else (refused, timeout, other answers) -> a failure.
Thresholds and the state machine live in :meth:`Backend.apply_probe`.

Probes reuse their connection, as Envoy's health checks do (a new connection per probe was 11 %
of the balancer's CPU at 32 backends probed every 0.5 s: ``bench/README.md``, scale simulation).
A connection idle past ``KEEPALIVE_S`` is closed here, under uvicorn's default keep-alive of 5 s,
so that with the default interval the balancer, not the backend, ends idle probe connections;
when a backend closes one anyway just as a probe is sent, aiohttp sends that GET once more on a
new connection (it retries idempotent requests on a reused connection), so the race is not a
failed probe. A killed backend's connection is reset with it; a frozen one's probe times out on
the old connection as it would on a new one.

An ``https://`` backend is probed over the same TLS as its requests (the same context: CA,
client certificate, and the check of its host, IP address or discovered DNS name); a handshake
that fails is a failed probe, logged with its reason once until the reason changes or a probe
passes."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import aiohttp

from loadbalancer.backend import Backend, Health
from loadbalancer.cluster import Cluster
from loadbalancer.tls import Reloading, failure_reason

__all__ = ["HealthChecker"]

log = logging.getLogger("loadbalancer.health")
_STATES = {
    "starting": Health.STARTING,
    "draining": Health.DRAINING,
    "overloaded": Health.OVERLOADED,
    "ready": Health.HEALTHY,
}
MAX_BODY = 65_536
KEEPALIVE_S = 4.0


class HealthChecker:
    """A Cluster watcher: starts probing a backend when it is added, stops when removed."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        path: str,
        interval: float,
        jitter: float,
        timeout: float,
        tls: Reloading | None = None,
    ) -> None:
        self.cluster = cluster
        self.tls = tls
        self._tls_errors: dict[str, str] = {}  # backend id -> the handshake failure last logged
        self.path = path
        self.interval = interval
        self.jitter = jitter
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rng = random.Random()

    async def __aenter__(self) -> HealthChecker:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=2, keepalive_timeout=KEEPALIVE_S)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        for backend in self.cluster.backends.values():
            self.added(backend)
        self.cluster.watchers.append(self)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self in self.cluster.watchers:
            self.cluster.watchers.remove(self)
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- Watcher -------------------------------------------------------------------------------
    def added(self, backend: Backend) -> None:
        task = asyncio.get_running_loop().create_task(self._run(backend))
        self._tasks[backend.id] = task
        task.add_done_callback(self._done)

    def removed(self, backend: Backend) -> None:
        self._tls_errors.pop(backend.id, None)
        task = self._tasks.pop(backend.id, None)
        if task is not None:
            task.cancel()

    def _done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("health checker crashed", exc_info=task.exception())

    # -- probing -------------------------------------------------------------------------------
    async def _run(self, backend: Backend) -> None:
        while not backend.removed:
            observed = await self.probe(backend)
            self.cluster.report_probe(backend, observed, time.monotonic())
            spread = self.interval * self.jitter
            await asyncio.sleep(self.interval + self._rng.uniform(-spread, spread))

    async def probe(self, backend: Backend) -> Health:
        """One probe; never raises (a failure is ``Health.UNHEALTHY``)."""
        assert self._session is not None
        url = backend.url + self.path
        context = self.tls.current if backend.tls and self.tls is not None else None
        name = backend.server_name if backend.tls else None  # a discovered one: its DNS name
        try:
            async with self._session.get(url, allow_redirects=False, ssl=context or True,
                                         server_hostname=name) as response:
                body = await response.content.read(MAX_BODY)
                status = response.status
        except aiohttp.ClientSSLError as exc:
            self._tls_failed(backend, exc)
            return Health.UNHEALTHY
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.debug("probe failed", extra={"backend": backend.id, "error": repr(exc)})
            return Health.UNHEALTHY
        self._tls_errors.pop(backend.id, None)
        if status == 200:
            return Health.HEALTHY
        if status == 503:
            return _state_of(body)
        return Health.UNHEALTHY


    def _tls_failed(self, backend: Backend, exc: aiohttp.ClientSSLError) -> None:
        reason = failure_reason(getattr(exc, "certificate_error", None) or exc.os_error)
        if self._tls_errors.get(backend.id) != reason:
            self._tls_errors[backend.id] = reason
            log.warning("TLS to a backend failed: unhealthy while this lasts",
                        extra={"backend": backend.id, "reason": reason, "error": str(exc)})


def _state_of(body: bytes) -> Health:
    """The state a 503 body reports; unreadable ones count as failures."""
    try:
        state = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return Health.UNHEALTHY
    found = _STATES.get(state) if isinstance(state, str) else None
    return found if found is not None and found is not Health.HEALTHY else Health.UNHEALTHY

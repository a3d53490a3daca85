"""Active health probes against real sockets: they reuse one connection while the backend keeps
it open; a backend that closes the connection as a probe arrives (the keep-alive race) costs no
failed probe; one that closes after every answer is probed on new connections; a refused port
and a silent one are failures."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from time import monotonic

from loadbalancer.backend import Health, Tuning
from loadbalancer.cluster import Cluster
from loadbalancer.health import HealthChecker
from loadbalancer.policies import make_policy
from loadbalancer.settings import BackendSpec

BODY = b'{"status":"ready"}'
OK = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
      + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


@dataclass
class ProbeTarget:
    """A tiny HTTP/1.1 server: answers every request 200 ready; ``close_after`` ends a connection
    after that many answers, ``drop_nth`` closes it without answering its n-th request (1-based)."""

    close_after: int | None = None
    drop_nth: int | None = None
    silent: bool = False
    connections: int = 0
    requests: int = 0
    dropped: int = 0
    port: int = 0
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        answered = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                self.requests += 1
                if self.silent:
                    await asyncio.sleep(3600)
                if self.drop_nth is not None and answered + 1 == self.drop_nth:
                    self.dropped += 1
                    return
                writer.write(OK)
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(target: ProbeTarget) -> AsyncIterator[ProbeTarget]:
    server = await asyncio.start_server(target.handle, "127.0.0.1", 0)
    target.port = server.sockets[0].getsockname()[1]
    try:
        yield target
    finally:
        server.close()
        for w in target._writers:
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def probe_n(port: int, n: int, *, probe_timeout: float = 1.0) -> list[Health]:
    cluster = Cluster(make_policy("round_robin"), Tuning())
    checker = HealthChecker(cluster, path="/health/ready", interval=3600, jitter=0,
                            timeout=probe_timeout)
    async with checker:
        backend = cluster.add(BackendSpec(url=f"http://127.0.0.1:{port}"), monotonic(), warm=True)
        checker.removed(backend)  # no background loop: the probes below, one after another
        return [await checker.probe(backend) for _ in range(n)]


async def test_probes_reuse_one_connection() -> None:
    async with serving(ProbeTarget()) as target:
        observed = await probe_n(target.port, 20)
    assert observed == [Health.HEALTHY] * 20
    assert target.requests == 20
    assert target.connections == 1


async def test_a_connection_closed_as_a_probe_arrives_is_no_failure() -> None:
    # the second request on every connection finds it closed: the keep-alive race, every time
    async with serving(ProbeTarget(drop_nth=2)) as target:
        observed = await probe_n(target.port, 10)
    assert observed == [Health.HEALTHY] * 10
    assert target.dropped >= 3  # the race happened, and was sent again on a new connection
    assert target.connections == target.dropped + 1


async def test_a_backend_that_closes_after_each_answer_is_probed_on_new_connections() -> None:
    async with serving(ProbeTarget(close_after=1)) as target:
        observed = await probe_n(target.port, 10)
    assert observed == [Health.HEALTHY] * 10
    assert target.connections >= 10


async def test_refused_and_silent_backends_fail() -> None:
    async with serving(ProbeTarget()) as target:
        port = target.port
    assert await probe_n(port, 2) == [Health.UNHEALTHY] * 2  # closed: refused
    async with serving(ProbeTarget(silent=True)) as target:
        started = monotonic()
        assert await probe_n(target.port, 1, probe_timeout=0.3) == [Health.UNHEALTHY]
        assert monotonic() - started < 5

"""Load for the reliability tests: closed and open loops that record every answer, and process
probes (RSS, open file descriptors) polled with deadlines.

Every request is a pre-encoded multipart body (``harness.images.make_bodies``). Each answer is a
``Shot``: when it was scheduled, sent and answered, its status, error code and ``Retry-After``. The
open loop fires on a fixed schedule whatever the server does, and latencies can be taken from the
scheduled time, so a slow server cannot hide behind a slow generator (no coordinated omission).
Both loops run with the test process's heap frozen (``service.heap.frozen_heap``): after the
engine tests the process holds torch and Ultralytics, and a full garbage collection of that heap
would stall the generator for a few hundred milliseconds in the middle of the measured latencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
import orjson
import psutil

from harness.images import Body
from harness.procs import wait_until
from service.heap import frozen_heap

__all__ = ["Shot", "closed_loop", "open_loop", "rss_mb", "settle_fds"]


@dataclass(frozen=True)
class Shot:
    scheduled: float
    sent: float
    done: float
    status: int  # -1: no answer (the exception's name is in ``code``)
    code: str | None
    retry_after: str | None

    @property
    def latency_ms(self) -> float:
        return (self.done - self.sent) * 1000

    @property
    def from_schedule_ms(self) -> float:
        return (self.done - self.scheduled) * 1000


def session(limit: int = 0, timeout: float = 30.0) -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout))


async def shoot(http: aiohttp.ClientSession, url: str, body: Body, scheduled: float,
                headers: dict[str, str] | None = None) -> Shot:
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        async with http.post(url, data=body.data,
                             headers={"Content-Type": body.content_type, **(headers or {})}) as r:
            payload = await r.read()
            code = None
            if r.status != 200:
                code = orjson.loads(payload).get("error", {}).get("code")
            return Shot(scheduled, sent, loop.time(), r.status, code, r.headers.get("Retry-After"))
    except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
        return Shot(scheduled, sent, loop.time(), -1, type(exc).__name__, None)


async def closed_loop(url: str, bodies: Sequence[Body], *, concurrency: int, total: int,
                      headers: dict[str, str] | None = None) -> list[Shot]:
    """``concurrency`` workers sending ``total`` requests back to back."""
    shots: list[Shot] = []
    counter = iter(range(total))
    loop = asyncio.get_running_loop()
    with frozen_heap():
        async with session(concurrency) as http:

            async def worker() -> None:
                for i in counter:
                    shots.append(await shoot(http, url, bodies[i % len(bodies)], loop.time(),
                                             headers))

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return shots


async def open_loop(url: str, bodies: Sequence[Body], *, rate: float, seconds: float,
                    headers: dict[str, str] | None = None, request_timeout: float = 30.0,
                    offset: int = 0) -> tuple[list[Shot], float]:
    """Requests at a fixed ``rate`` for ``seconds``; returns the shots and when the last was sent.

    Each request is its own task on an unbounded connection pool, so nothing queues client-side.
    """
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Shot]] = []
    count = int(rate * seconds)
    with frozen_heap():
        async with session(0, request_timeout) as http:
            t0 = loop.time() + 0.05
            for i in range(count):
                at = t0 + i / rate
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the schedule itself, not a synchronisation
                tasks.append(asyncio.create_task(
                    shoot(http, url, bodies[(offset + i) % len(bodies)], at, headers)))
            last_sent = loop.time()
            shots = list(await asyncio.gather(*tasks))
    return shots, last_sent


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def settle_fds(pid: int, baseline: int, timeout: float = 15.0) -> int:
    """Wait until the process's open file descriptors are back to ``baseline`` (or fewer)."""
    proc = psutil.Process(pid)
    wait_until(lambda: proc.num_fds() <= baseline, timeout,
               f"pid {pid} to close its file descriptors (baseline {baseline})")
    return int(proc.num_fds())

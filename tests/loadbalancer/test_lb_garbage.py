"""A proxied request leaves nothing for the garbage collector: every object made for it is freed
by reference counting when its answer is done (a cycle per request made the collector run every
few dozen requests, a few per cent of the balancer's CPU under load). An in-process balancer in
front of a real backend, requests on one keep-alive connection."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator

import pytest

from loadbalancer.server import LoadBalancer
from loadbalancer.settings import LBSettings
from tests.loadbalancer.harness import BackendProc, start_backends

REQUEST = b"POST /v1/detect HTTP/1.1\r\nHost: lb\r\nContent-Length: 512\r\n\r\n" + b"x" * 512
OURS = {"Exchange", "RetryState", "Request", "ResponseHead"}


@pytest.fixture(scope="module")
def backend() -> Iterator[BackendProc]:
    (proc,) = start_backends([BackendProc("only")])
    yield proc
    proc.stop()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    await reader.readexactly(length)


async def test_a_proxied_request_leaves_no_cyclic_garbage(backend: BackendProc) -> None:
    settings = LBSettings(backends=[backend.url], port=0, admin_port=0, health_interval=3600)
    async with LoadBalancer(settings) as lb:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
        try:
            for _ in range(5):  # connections opened, caches filled
                await _exchange(reader, writer)
            gc.collect()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                for _ in range(50):
                    await _exchange(reader, writer)
                gc.collect()
                left = Counter(type(o).__name__ for o in gc.garbage)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
        finally:
            writer.close()
    assert not OURS & set(left), left.most_common(10)

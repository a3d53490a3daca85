"""The delay proxy that stands in for netem: every byte arrives intact, in order, both ways, and a
round trip through it takes the delay twice (once each way)."""

from __future__ import annotations

import asyncio
import os
import time

from harness.multihost.delayproxy import start

DELAY_MS = 50.0  # each way


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65_536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_bytes_pass_intact_and_a_round_trip_takes_the_delay_twice() -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    target = echo.sockets[0].getsockname()[:2]
    proxy = await start(("127.0.0.1", 0), target, DELAY_MS)
    host, port = proxy.sockets[0].getsockname()[:2]
    async with echo, proxy:
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        round_trip = time.monotonic() - started
        payload = os.urandom(3 * 2**20)  # several chunks, and more than the socket buffers hold
        writer.write(payload)
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(-1), 30.0)  # to the end: EOF passed on
        writer.close()
    assert echoed == payload
    assert 2 * DELAY_MS / 1000 <= round_trip < 2 * DELAY_MS / 1000 + 0.5, round_trip

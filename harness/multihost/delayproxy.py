"""A TCP proxy that delays every byte by a fixed time each way: added network latency, emulated.

``tc qdisc ... netem`` is what the issue asks for, but the kernel of the machines this project
runs on has no ``sch_netem`` (``Specified qdisc kind is unknown``) and modules cannot be loaded,
so the delay is added in user space instead. Run inside the delayed host's namespace, in front of
its service:

    python -m harness.multihost.delayproxy --listen 198.18.0.13:8001 --target 198.18.0.13:8000 \\
        --delay-ms 50

Each chunk read from one side is written to the other ``delay_ms`` after it arrived, in order,
in both directions: 50 ms each way adds 100 ms to every round trip, which an HTTP request and its
answer make once. A new connection is accepted at once (the TCP handshake is not delayed), and
the proxy adds no loss. What is queued per direction is bounded (``MAX_CHUNKS``), so a slow
reader slows the writer rather than filling memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

__all__ = ["main", "serve", "start"]

CHUNK = 65_536
MAX_CHUNKS = 256  # chunks in flight per direction (16 MiB at most)
_EOF = b""
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_CHUNKS)

    async def read() -> None:
        try:
            while chunk := await reader.read(CHUNK):
                await queue.put((loop.time() + delay, chunk))
        except OSError:
            pass  # a reset: pass the end on
        await queue.put((loop.time() + delay, _EOF))

    async def write() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the emulated propagation delay itself
            if not chunk:  # the end: passed on once the data before it has been
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _handler(target: tuple[str, int], delay: float) -> Handler:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*target)
        except OSError:
            await _close(client_w)
            return
        pipes = [asyncio.create_task(_pipe(client_r, upstream_w, delay)),
                 asyncio.create_task(_pipe(upstream_r, client_w, delay))]
        try:
            # both directions until both have ended; an error in one ends both
            await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            await _close(upstream_w)
            await _close(client_w)

    return handle


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def start(listen: tuple[str, int], target: tuple[str, int], delay_ms: float) -> asyncio.Server:
    """A server on ``listen`` (port 0: any) that proxies each connection to ``target`` with
    ``delay_ms`` added each way."""
    return await asyncio.start_server(_handler(target, delay_ms / 1000.0), *listen)


async def serve(listen: tuple[str, int], target: tuple[str, int], delay_ms: float) -> None:
    """Proxy ``listen`` to ``target`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await start(listen, target, delay_ms):
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.multihost.delayproxy", description=__doc__)
    ap.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--delay-ms", type=float, required=True, help="delay added in each direction")
    args = ap.parse_args(argv)
    asyncio.run(serve(_address(args.listen), _address(args.target), args.delay_ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

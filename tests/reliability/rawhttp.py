"""A tiny HTTP/1.1 client on raw asyncio streams, for requests no polite client would send.

Full control of the bytes: any header (however large), any body, ``Expect: 100-continue`` honoured
(the body is sent only after ``100 Continue``, so a refusal from the headers is read reliably),
trickled bodies, and connections left open. One request per connection (``Connection: close``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RawResponse", "open_idle", "request", "trickle"]


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    return await reader.read()


def _head(method: str, target: str, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def request(port: int, method: str, target: str, headers: dict[str, str] | None = None,
                  body: bytes = b"", within: float = 60.0) -> RawResponse:
    """Send one request and read the answer (``Expect: 100-continue`` waits for the go-ahead)."""
    headers = dict(headers or {})
    expect = headers.get("expect", "").lower() == "100-continue"
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(within):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            writer.write(_head(method, target, headers, len(body) if body or method != "GET" else None))
            if not expect:
                writer.write(body)
            await writer.drain()
            status, got = await _read_head(reader)
            if status == 100:
                writer.write(body)
                await writer.drain()
                status, got = await _read_head(reader)
            data = await _read_body(reader, got)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return RawResponse(status, got, data, loop.time() - started)


async def trickle(port: int, target: str, headers: dict[str, str], body: bytes, every: float,
                  stop: asyncio.Event) -> int:
    """Send ``body`` one byte per ``every`` seconds until it is all sent or ``stop`` is set.

    Returns how many bytes were sent. The connection is closed on the way out.
    """
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        writer.write(_head("POST", target, headers, len(body)))
        await writer.drain()
        for i in range(len(body)):
            writer.write(body[i:i + 1])
            await writer.drain()
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
            if stop.is_set():
                break
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return sent


async def open_idle(port: int, count: int, partial: bytes = b"") -> list[asyncio.StreamWriter]:
    """Open ``count`` connections that send ``partial`` (maybe nothing) and then stay silent."""
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        if partial:
            writer.write(partial)
            await writer.drain()
        writers.append(writer)
    return writers

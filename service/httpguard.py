"""A guard in front of uvicorn's HTTP protocol: a bound on each request head, and our JSON error
for a request that is not HTTP/1.1.

uvicorn's httptools protocol puts no limit on the request line and headers, and answers a request
it cannot parse with a plain-text line. The guard sees each chunk of bytes before uvicorn does,
through asyncio's public ``Protocol`` interface (uvicorn's own protocol, whichever ``http="auto"``
picks, runs unchanged behind it), parses the heads with its own httptools parser, and:

- answers ``431 headers_too_large`` and closes once the request line and headers pass
  ``max_header_bytes`` (``Config.h11_max_incomplete_event_size``), counted as they arrive;
- answers ``400 invalid_request`` and closes when the bytes are not HTTP/1.1.

After a protocol upgrade (WebSocket) the bytes are no longer HTTP, and the guard steps aside.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import httptools
from uvicorn.config import HTTP_PROTOCOLS, Config
from uvicorn.importer import import_from_string

from service.errors import HeadersTooLarge, ServiceError
from wire import errors as codes
from wire.headers import REQUEST_ID
from wire.ids import new_request_id

__all__ = ["DEFAULT_MAX_HEADER_BYTES", "GuardedHttpProtocol"]

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
_REASONS = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops with ``HttpParserCallbackError``."""


class GuardedHttpProtocol(asyncio.Protocol):
    def __init__(self, config: Config, **kwargs: Any) -> None:
        inner_class = import_from_string(HTTP_PROTOCOLS["auto"])
        self._inner: asyncio.Protocol = inner_class(config=config, **kwargs)
        self._default_headers: list[tuple[bytes, bytes]] = list(
            getattr(kwargs.get("server_state"), "default_headers", []))
        self._max_head = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._checking = True
        self._in_head = True  # reading a request line and headers (or waiting for one)
        self._read_in_head = 0  # bytes received while in the head: the memory bound
        self._head_size = 0  # bytes of URL, header names and values parsed so far
        self._too_large = False

    # asyncio.Protocol: every event goes on to uvicorn's protocol --------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._checking and not self._check(data):
            return
        self._inner.data_received(data)

    # the check ----------------------------------------------------------------------------------
    def _check(self, data: bytes) -> bool:
        """False when the guard answered (and closed) instead of passing the bytes on."""
        if self._in_head:
            self._read_in_head += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._checking = False
        except httptools.HttpParserError:
            self._refuse()
            return False
        if self._in_head and self._read_in_head > self._max_head:
            self._too_large = True  # one line longer than the limit, still arriving
            self._refuse()
            return False
        return True

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._max_head:
            self._too_large = True
            raise _HeadTooLarge

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._in_head = False

    def on_message_complete(self) -> None:
        self._in_head, self._read_in_head, self._head_size = True, 0, 0

    # answering ----------------------------------------------------------------------------------
    def _refuse(self) -> None:
        self._checking = False
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        err = (HeadersTooLarge(f"the request line and headers are over {self._max_head} bytes")
               if self._too_large else
               ServiceError("the request is not valid HTTP/1.1", row=codes.INVALID_REQUEST))
        request_id = new_request_id()
        body = err.body(request_id)
        head = [b"HTTP/1.1 %d %s\r\n" % (err.status, _REASONS[err.status])]
        head += [name + b": " + value + b"\r\n" for name, value in self._default_headers]
        head += [b"content-type: application/json\r\n",
                 b"content-length: %d\r\n" % len(body),
                 REQUEST_ID.encode() + b": " + request_id.encode() + b"\r\n",
                 b"connection: close\r\n\r\n"]
        transport.write(b"".join(head) + body)
        transport.close()

"""uvicorn's httptools protocol with a bound on the request head, and errors in our JSON format.

httptools (unlike h11) puts no limit on the request line and headers: a client could send
megabytes of headers and the server would buffer them all. This protocol counts the bytes of the
head as they arrive and answers ``431 header_too_large`` (and closes) once they pass
``max_header_bytes`` (``Config.h11_max_incomplete_event_size``). The bound holds within one read
from the socket. Requests httptools cannot parse get ``400 invalid_request`` in the same JSON
error format as every other error, instead of uvicorn's plain-text line.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import HeaderTooLarge, ServiceError
from service.logs import new_request_id
from service.middleware import error_body

__all__ = ["DEFAULT_MAX_HEADER_BYTES", "LimitedHttpToolsProtocol"]

DEFAULT_MAX_HEADER_BYTES = 16 * 1024


class _HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops with ``HttpParserCallbackError`` and the
    base class's ``data_received`` calls ``send_400_response``, which answers 431 instead."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head = self.config.h11_max_incomplete_event_size or DEFAULT_MAX_HEADER_BYTES
        self._in_head = True  # reading a request line and headers (or waiting for one)
        self._read_in_head = 0  # bytes received while in the head (a memory bound)
        self._head_size = 0  # bytes of URL, header names and values parsed so far
        self._too_large = False

    # counting -----------------------------------------------------------------------------------
    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self._max_head:
            self._too_large = True
            raise _HeadTooLarge

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        try:
            super().on_message_complete()
        finally:
            self._in_head, self._read_in_head, self._head_size = True, 0, 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._read_in_head += len(data)
        super().data_received(data)
        if self._in_head and self._read_in_head > self._max_head and not self.transport.is_closing():
            # one header line longer than the limit, still arriving: httptools buffers it whole
            self._too_large = True
            self.send_400_response("")

    # answering ----------------------------------------------------------------------------------
    def send_400_response(self, msg: str) -> None:
        err: ServiceError
        if self._too_large:
            err = HeaderTooLarge(f"the request line and headers are over {self._max_head} bytes")
        else:
            err = ServiceError("the request is not valid HTTP/1.1", code="invalid_request")
            err.status = 400
        request_id = new_request_id()
        body = error_body(err, request_id)
        reason = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}[err.status]
        head = [b"HTTP/1.1 %d %s\r\n" % (err.status, reason)]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n",
                 b"content-length: %d\r\n" % len(body),
                 b"x-request-id: " + request_id.encode() + b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()

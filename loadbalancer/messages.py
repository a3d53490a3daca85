"""HTTP/1.1 bytes: the request as forwarded to a backend, answer heads, and the balancer's own
JSON error answers (``{"error": {"code", "message", "request_id"}}``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus

from loadbalancer.upstream import Framing, ResponseHead
from wire.errors import error_body, retry_after_header
from wire.headers import HOP_BY_HOP_BYTES, REQUEST_ID, REQUEST_TIMEOUT_MS, UPSTREAM
from wire.ids import valid_request_id

__all__ = [
    "REQUEST_DROP",
    "SPECIAL",
    "Request",
    "error_response",
    "response_head",
    "take_header",
    "upstream_request",
]

# Hop-by-hop headers, and the ones the balancer writes itself.
REQUEST_DROP = HOP_BY_HOP_BYTES | {b"content-length", b"expect"}
_REQUEST_ID = REQUEST_ID.encode()
_REQUEST_TIMEOUT_MS = REQUEST_TIMEOUT_MS.encode()
_UPSTREAM = UPSTREAM.encode()
# Request headers not passed on as they came: these and the ones :func:`take_header` reads.
SPECIAL = REQUEST_DROP | {_REQUEST_ID, _REQUEST_TIMEOUT_MS, b"x-forwarded-for", b"host"}
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    """One client request, body buffered whole so that it can be sent again."""

    method: bytes
    target: bytes
    http11: bool
    keep_alive: bool
    request_id: bytes
    client: bytes
    started: float
    timeout_ms: float | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    forwarded_for: bytes = b""
    has_host: bool = False
    prefix: bytes = b""  # the forwarded head without its per-attempt lines

    def build_prefix(self) -> None:
        parts = [self.method, b" ", self.target, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            parts += (name, b": ", value, b"\r\n")
        xff = self.forwarded_for + b", " + self.client if self.forwarded_for else self.client
        parts += (_REQUEST_ID, b": ", self.request_id, b"\r\nx-forwarded-for: ", xff, b"\r\n")
        if self.body or self.method in BODY_METHODS:
            parts.append(b"content-length: %d\r\n" % len(self.body))
        self.prefix = b"".join(parts)


def take_header(request: Request, lname: bytes, name: bytes, value: bytes) -> None:
    """A request header in :data:`SPECIAL` (``lname``, lowercased), but Content-Length, Expect
    and Upgrade, which each front reads itself: a valid X-Request-Id and X-Request-Timeout-Ms are
    taken, X-Forwarded-For is kept to be extended, Host passed on; the hop-by-hop ones dropped."""
    if lname == _REQUEST_ID:
        if valid_request_id(value):
            request.request_id = value
    elif lname == _REQUEST_TIMEOUT_MS:
        request.timeout_ms = _parse_timeout(value)
    elif lname == b"x-forwarded-for":
        request.forwarded_for = value
    elif lname == b"host":
        request.has_host = True
        request.headers.append((name, value))


def _parse_timeout(value: bytes) -> float | None:
    try:
        timeout = float(value)
    except ValueError:
        return None
    return timeout if 0 <= timeout < float("inf") else None


def upstream_request(request: Request, remaining_ms: int, backend_address: bytes) -> bytes:
    """The bytes of one attempt: head with the remaining deadline, then the body."""
    host = b"" if request.has_host else b"host: " + backend_address + b"\r\n"
    timeout = _REQUEST_TIMEOUT_MS + b": %d\r\n\r\n" % remaining_ms
    return b"".join((request.prefix, host, timeout, request.body))


def response_head(
    head: ResponseHead,
    *,
    upstream: bytes,
    request_id: bytes,
    http11: bool,
    close: bool,
) -> bytes:
    """The answer's head as the client gets it; ``Framing.CLOSE`` bodies go out chunked."""
    parts = [_status_line(head.status, head.reason)]
    parts += head.lines
    parts += (_UPSTREAM, b": ", upstream, b"\r\n")
    if not head.has_request_id:
        parts += (_REQUEST_ID, b": ", request_id, b"\r\n")
    if head.framing in (Framing.CHUNKED, Framing.CLOSE):
        if http11:
            parts.append(b"transfer-encoding: chunked\r\n")
    elif head.content_length >= 0:
        parts.append(b"content-length: %d\r\n" % head.content_length)
    if close:
        parts.append(b"connection: close\r\n")
    elif not http11:
        parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def _status_line(status: int, reason: bytes) -> bytes:
    """``HTTP/1.1 200 OK`` and CRLF, the standard phrase when the backend sent none; the lines
    made are kept (a backend sends few distinct ones; the cache stops growing at 256)."""
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b""))
        if len(_STATUS_LINES) < 256:
            _STATUS_LINES[status, reason] = line
    return line


def error_response(
    status: int,
    code: str,
    message: str,
    request_id: bytes,
    *,
    retry_after: int | None = None,
    close: bool = False,
) -> bytes:
    """A whole answer from the balancer itself, in the project's error format."""
    body = error_body(code, message, request_id.decode("latin-1"))
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")),
        b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
        _REQUEST_ID + b": " + request_id + b"\r\n",
    ]
    if retry_after is not None:
        lines.append(b"retry-after: %s\r\n" % retry_after_header(retry_after).encode())
    if close:
        lines.append(b"connection: close\r\n")
    lines += (b"\r\n", body)
    return b"".join(lines)

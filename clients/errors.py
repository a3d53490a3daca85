"""The client's exceptions, and the one place where HTTP answers, httpx errors and gRPC statuses
become them.

::

    ClientError                 every error this package raises; .status .code .request_id
    ├── InvalidRequest          the caller must change something: a 4xx (400, 404, 413, 415, 422),
    │   │                       an unreadable image or a bad URL. Never retried.
    │   ├── Unauthorized        401 or 403: missing or wrong API key. Never retried.
    │   └── HttpRequired        a call the gRPC client makes over HTTP (annotate, track) without
    │                           the service's HTTP address (``http_url``). Never sent.
    ├── Overloaded              503 (overloaded, not_ready, draining): retried, after Retry-After.
    │   └── RateLimited         429 (rate_limited): retried, after Retry-After.
    ├── ServerError             any other 5xx; 502 (bad gateway) is retried, 500 and 501 are not.
    ├── DeadlineExceeded        504, a read/write/pool timeout (both retried), or the call's own
    │                           deadline spent (not retried: there is no time left).
    ├── ConnectError            no connection, or it broke before an answer: retried (every call of
    │                           this client is idempotent).
    └── ProtocolError           an answer not in the contract's shape. Never retried.

Whether one error is retried is its ``retryable`` attribute, set where it is made; the retry loop
reads only that.

Over gRPC the same classes are raised: a status and its ``yoloserve-error-code`` trailer name the
row of the error table (``wire.grpc_status.row_of``), and ``status`` is that row's HTTP status, as
if the call had been made over HTTP; ``UNAVAILABLE`` with no row (no connection) is a
:class:`ConnectError`, the call's own ``DEADLINE_EXCEEDED`` a :class:`DeadlineExceeded`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import httpx
from pydantic import ValidationError

from wire.errors import status_of
from wire.grpc_status import ERROR_CODE_TRAILER, PUSHBACK_TRAILER, GrpcStatus, row_of
from wire.headers import REQUEST_ID
from wire.schemas import ErrorBody, ErrorDetail

__all__ = [
    "ClientError",
    "ConnectError",
    "DeadlineExceeded",
    "HttpRequired",
    "InvalidRequest",
    "Overloaded",
    "ProtocolError",
    "RateLimited",
    "ServerError",
    "Unauthorized",
    "error_from_detail",
    "error_from_grpc",
    "error_from_response",
    "error_from_transport",
]

RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
_MAX_MESSAGE = 300


class ClientError(Exception):
    """Base of the client's errors: what went wrong, with the service's status, code and id."""

    default_code = "client_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.request_id = request_id
        self.retryable = retryable
        self.retry_after = retry_after
        self.attempt: int | None = None  # the try (1-based) that failed, once a call made it

    def __str__(self) -> str:
        parts = [self.code]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.request_id:
            parts.append(f"request {self.request_id}")
        return f"{self.message} ({', '.join(parts)})"

    def to_dict(self) -> dict[str, str | int | None]:
        """The error as plain JSON-able data (what the CLI writes on an error line)."""
        return {
            "code": self.code,
            "message": self.message,
            "status": self.status,
            "request_id": self.request_id,
        }


class InvalidRequest(ClientError):
    """The request cannot succeed as it is (a 4xx other than 429, or a local misuse)."""

    default_code = "invalid_request"


class Unauthorized(InvalidRequest):
    """401 or 403: the API key is missing or not accepted."""

    default_code = "unauthorized"


class HttpRequired(InvalidRequest):
    """A call that only the service's HTTP API has (``annotate``, ``track``), asked of the gRPC
    client made without ``http_url``: the message says what to pass."""

    default_code = "http_required"


class Overloaded(ClientError):
    """503: the service is overloaded, not ready or draining; try again after ``retry_after``."""

    default_code = "overloaded"


class RateLimited(Overloaded):
    """429: this client is over its rate limit; try again after ``retry_after``."""

    default_code = "rate_limited"


class ServerError(ClientError):
    """A 5xx that is neither 503 nor 504."""

    default_code = "server_error"


class DeadlineExceeded(ClientError):
    """504, a timeout, or the call's deadline spent before an answer came."""

    default_code = "deadline_exceeded"


class ConnectError(ClientError):
    """No connection to the service, or the connection broke before the answer."""

    default_code = "connect_failed"


class ProtocolError(ClientError):
    """The answer is not what the contract promises (not JSON, wrong shape)."""

    default_code = "protocol_error"


def _class_for_status(status: int) -> type[ClientError]:
    if status in (401, 403):
        return Unauthorized
    if status == 429:
        return RateLimited
    if status == 503:
        return Overloaded
    if status == 504:
        return DeadlineExceeded
    if 400 <= status < 500:
        return InvalidRequest
    if status >= 500:
        return ServerError
    return ProtocolError  # a 1xx or 3xx where an answer or an error was expected


def error_from_detail(detail: ErrorDetail, *, status: int | None = None) -> ClientError:
    """One item's error in a batch answer (no HTTP status of its own) as a :class:`ClientError`."""
    known = status if status is not None else status_of(detail.code)
    cls = _class_for_status(known) if known is not None else ServerError
    return cls(detail.message, status=status, code=detail.code, request_id=detail.request_id)


def error_from_response(
    response: httpx.Response, *, request_id: str | None, retry_after: float | None = None
) -> ClientError:
    """A non-2xx answer as a :class:`ClientError`, from its error body when it has one."""
    status = response.status_code
    cls = _class_for_status(status)
    header_id = response.headers.get(REQUEST_ID) or request_id
    try:
        detail = ErrorBody.model_validate_json(response.content).error
    except ValidationError:
        text = response.text[:_MAX_MESSAGE].strip() or response.reason_phrase
        return cls(
            text or f"HTTP {status}",
            status=status,
            code=f"http_{status}",
            request_id=header_id,
            retryable=status in RETRYABLE_STATUSES,
            retry_after=retry_after,
        )
    return cls(
        detail.message,
        status=status,
        code=detail.code,
        request_id=detail.request_id or header_id,
        retryable=status in RETRYABLE_STATUSES,
        retry_after=retry_after,
    )


def error_from_transport(
    exc: httpx.HTTPError | httpx.InvalidURL, *, request_id: str | None
) -> ClientError:
    """An httpx error raised before any answer, as a :class:`ClientError` (raise it ``from``)."""
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        code = "connect_timeout" if isinstance(exc, httpx.TimeoutException) else "connect_failed"
        return ConnectError(detail, code=code, request_id=request_id, retryable=True)
    if isinstance(exc, httpx.TimeoutException):  # read, write or pool
        return DeadlineExceeded(detail, code="timeout", request_id=request_id, retryable=True)
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        return ConnectError(detail, code="connection_lost", request_id=request_id, retryable=True)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL | httpx.LocalProtocolError):
        return InvalidRequest(detail, code="invalid_url", request_id=request_id)
    return ProtocolError(detail, request_id=request_id)


def error_from_grpc(
    status: int, details: str | None, trailers: Mapping[str, str], *, request_id: str | None,
    timer_retryable: bool = False,
) -> ClientError:
    """A gRPC call's failure as a :class:`ClientError` (raise it ``from`` grpcio's error).

    ``timer_retryable``: a ``DEADLINE_EXCEEDED`` of the client's own timer was a try's timeout
    with time left for another try, not the call's deadline."""
    code = trailers.get(ERROR_CODE_TRAILER)
    message = (details or "").strip()[:_MAX_MESSAGE] or GrpcStatus(status).name
    rid = trailers.get(REQUEST_ID) or request_id
    if code is None:
        if status in (GrpcStatus.UNAVAILABLE, GrpcStatus.CANCELLED):
            return ConnectError(message, code="unavailable", request_id=rid, retryable=True)
        if status == GrpcStatus.DEADLINE_EXCEEDED:
            return DeadlineExceeded(message, code="timeout" if timer_retryable else None,
                                    request_id=rid, retryable=timer_retryable)
        if status == GrpcStatus.RESOURCE_EXHAUSTED and "larger than max" in message:
            return InvalidRequest(message, status=413, code="payload_too_large", request_id=rid)
    row = row_of(status, code)
    retry_after: float | None = None
    pushback = trailers.get(PUSHBACK_TRAILER)
    if pushback is not None:
        try:
            retry_after = max(0.0, int(pushback) / 1000)
        except ValueError:
            retry_after = None
    return _class_for_status(row.status)(
        message, status=row.status, code=row.code, request_id=rid,
        retryable=row.status in RETRYABLE_STATUSES, retry_after=retry_after)

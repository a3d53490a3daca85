"""The table of error codes, and the error body: one definition for the service, the balancer and
the client, so that one condition has one status and one code at every hop.

Every error body is ``{"error": {"code", "message", "request_id"}}``. ``retryable`` says whether a
client may send the same request again (after ``Retry-After`` where the answer has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import orjson

__all__ = [
    "BACKEND_EXISTS",
    "BACKEND_NOT_FOUND",
    "BAD_GATEWAY",
    "DEADLINE_EXCEEDED",
    "DRAINING",
    "ERRORS",
    "HEADERS_TOO_LARGE",
    "IMAGE_DIMENSIONS",
    "INTERNAL_ERROR",
    "INVALID_IMAGE",
    "INVALID_REQUEST",
    "METHOD_NOT_ALLOWED",
    "MODEL_NOT_FOUND",
    "NOT_FOUND",
    "NOT_READY",
    "NO_HEALTHY_BACKEND",
    "OVERLOADED",
    "PAYLOAD_TOO_LARGE",
    "RATE_LIMITED",
    "REQUEST_TIMEOUT",
    "STALE_FRAME",
    "STREAM_NOT_FOUND",
    "TOO_MANY_STREAMS",
    "UNAUTHORIZED",
    "UNSUPPORTED_MEDIA_TYPE",
    "VALIDATION_ERROR",
    "ErrorCode",
    "error_body",
    "error_dict",
    "retry_after_header",
    "status_of",
]


@dataclass(frozen=True)
class ErrorCode:
    """One row of the table: a stable snake_case code, its HTTP status, and when it is used."""

    code: str
    status: int
    when: str
    retryable: bool = False
    retry_after: bool = False  # the answer carries Retry-After

    def body(self, message: str, request_id: str | None) -> bytes:
        return error_body(self.code, message, request_id)


def _row(code: str, status: int, when: str, *, retryable: bool = False,
         retry_after: bool = False) -> ErrorCode:
    return ErrorCode(code, status, when, retryable, retry_after)


INVALID_IMAGE: Final = _row("invalid_image", 400, "not an image, corrupt or truncated, unsupported "
                            "pixel format, or bad base64")
IMAGE_DIMENSIONS: Final = _row("image_dimensions", 400, "a side of the image outside the allowed range")
WRONG_TASK: Final = _row("wrong_task", 400, "a route of another task: /v1/detect (and annotate) on a "
                         "classifier, /v1/classify on a model that is not one")
INVALID_REQUEST: Final = _row("invalid_request", 400, "not valid HTTP/1.1, or a body that cannot be read")
UNAUTHORIZED: Final = _row("unauthorized", 401, "a valid API key (or admin token) is required")
NOT_FOUND: Final = _row("not_found", 404, "no such route")
MODEL_NOT_FOUND: Final = _row("model_not_found", 404, "no model of that name")
STREAM_NOT_FOUND: Final = _row("stream_not_found", 404, "no stream of that id")
BACKEND_NOT_FOUND: Final = _row("backend_not_found", 404, "balancer admin: no backend with that id")
METHOD_NOT_ALLOWED: Final = _row("method_not_allowed", 405, "the route does not take that method")
REQUEST_TIMEOUT: Final = _row("request_timeout", 408, "the request was not received in time")
STALE_FRAME: Final = _row("stale_frame", 409, "a stream frame whose seq is not above the last one")
BACKEND_EXISTS: Final = _row("backend_exists", 409, "balancer admin: a backend with that URL exists")
PAYLOAD_TOO_LARGE: Final = _row("payload_too_large", 413, "body or image over the size limit, or more "
                                "pixels than allowed")
UNSUPPORTED_MEDIA_TYPE: Final = _row("unsupported_media_type", 415, "content type neither multipart "
                                     "nor JSON")
VALIDATION_ERROR: Final = _row("validation_error", 422, "a parameter out of range or of the wrong "
                               "type, or a missing field")
RATE_LIMITED: Final = _row("rate_limited", 429, "over the per-client rate limit", retryable=True,
                           retry_after=True)
HEADERS_TOO_LARGE: Final = _row("headers_too_large", 431, "the request line and headers over the limit")
INTERNAL_ERROR: Final = _row("internal_error", 500, "a fault of the server; details are in its log")
NO_HEALTHY_BACKEND: Final = _row("no_healthy_backend", 502, "balancer: no backend could take the "
                                 "request within its retries and deadline", retryable=True)
BAD_GATEWAY: Final = _row("bad_gateway", 502, "balancer: the backend's answer broke or was not "
                          "HTTP/1.1")
OVERLOADED: Final = _row("overloaded", 503, "the queue is full", retryable=True, retry_after=True)
NOT_READY: Final = _row("not_ready", 503, "the model is still loading", retryable=True, retry_after=True)
DRAINING: Final = _row("draining", 503, "shutting down", retryable=True, retry_after=True)
TOO_MANY_STREAMS: Final = _row("too_many_streams", 503, "too many active video streams",
                               retryable=True, retry_after=True)
DEADLINE_EXCEEDED: Final = _row("deadline_exceeded", 504, "the request's deadline passed before its "
                                "result was ready; it was dropped without running", retryable=True)

ERRORS: Final[dict[str, ErrorCode]] = {
    row.code: row
    for row in (
        INVALID_IMAGE, IMAGE_DIMENSIONS, WRONG_TASK, INVALID_REQUEST, UNAUTHORIZED, NOT_FOUND,
        MODEL_NOT_FOUND,
        STREAM_NOT_FOUND, BACKEND_NOT_FOUND, METHOD_NOT_ALLOWED, REQUEST_TIMEOUT, STALE_FRAME,
        BACKEND_EXISTS, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, VALIDATION_ERROR, RATE_LIMITED,
        HEADERS_TOO_LARGE, INTERNAL_ERROR, NO_HEALTHY_BACKEND, BAD_GATEWAY, OVERLOADED, NOT_READY,
        DRAINING, TOO_MANY_STREAMS, DEADLINE_EXCEEDED,
    )
}
"""Every code any hop answers with, by code."""


def status_of(code: str) -> int | None:
    row = ERRORS.get(code)
    return row.status if row is not None else None


def error_dict(code: str, message: str, request_id: str | None) -> dict[str, dict[str, str | None]]:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def error_body(code: str, message: str, request_id: str | None) -> bytes:
    """The JSON error body every hop answers with."""
    return orjson.dumps(error_dict(code, message, request_id))


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds: round up, and never 0 (that would mean "now")."""
    whole = int(seconds)
    return str(max(1, whole + (whole < seconds)))

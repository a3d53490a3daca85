"""The service's errors and the one place where foreign errors become HTTP answers.

    ServiceError (500 internal_error)
    ├── BadRequest (400 invalid_image, image_dimensions, invalid_request)
    ├── Unauthorized (401 unauthorized)
    ├── NotFound (404 not_found)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── HeadersTooLarge (431 headers_too_large)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    ├── ValidationFailed (422 validation_error)
    ├── RateLimited (429 rate_limited, Retry-After)
    ├── Unavailable (503, Retry-After): Overloaded (overloaded), NotReady (not_ready),
    │                                   Draining (draining)
    └── DeadlineExceeded (504 deadline_exceeded)

Statuses and codes come from the shared table in :mod:`wire.errors`. Engine errors
(``service.engine.errors``) and batching errors (``batching``) are mapped by ``to_service_error``;
anything else is an internal error whose details stay in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from batching import BatchingError, QueueFull, ShuttingDown
from batching import DeadlineExceeded as BatchDeadlineExceeded
from wire import errors as codes
from wire.errors import ErrorCode, retry_after_header
from wire.headers import RETRY_AFTER

__all__ = [
    "BadRequest",
    "DeadlineExceeded",
    "Draining",
    "HeadersTooLarge",
    "NotFound",
    "NotReady",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "ValidationFailed",
    "WrongTask",
    "boundary_error",
    "to_service_error",
    "validation_failed",
]

log = logging.getLogger("yoloserve")


class ServiceError(Exception):
    row: ErrorCode = codes.INTERNAL_ERROR

    def __init__(self, message: str = "internal error", *, row: ErrorCode | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if row is not None:
            self.row = row
        self.retry_after = retry_after

    @property
    def status(self) -> int:
        return self.row.status

    @property
    def code(self) -> str:
        return self.row.code

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {RETRY_AFTER: retry_after_header(self.retry_after)}

    def body(self, request_id: str | None) -> bytes:
        return self.row.body(self.message, request_id)


class BadRequest(ServiceError):
    row = codes.INVALID_IMAGE


class WrongTask(BadRequest):
    """A route of another task (detection routes on a classifier, or the reverse)."""

    row = codes.WRONG_TASK


class Unauthorized(ServiceError):
    row = codes.UNAUTHORIZED

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    row = codes.NOT_FOUND


class PayloadTooLarge(ServiceError):
    row = codes.PAYLOAD_TOO_LARGE


class HeadersTooLarge(ServiceError):
    row = codes.HEADERS_TOO_LARGE


class UnsupportedMediaType(ServiceError):
    row = codes.UNSUPPORTED_MEDIA_TYPE


class ValidationFailed(ServiceError):
    row = codes.VALIDATION_ERROR


class RateLimited(ServiceError):
    row = codes.RATE_LIMITED


class Unavailable(ServiceError):
    """A 503: always with Retry-After."""

    row = codes.OVERLOADED

    def __init__(self, message: str, *, retry_after: float, row: ErrorCode | None = None) -> None:
        super().__init__(message, retry_after=retry_after, row=row)


class Overloaded(Unavailable):
    row = codes.OVERLOADED


class NotReady(Unavailable):
    row = codes.NOT_READY


class Draining(Unavailable):
    row = codes.DRAINING


class DeadlineExceeded(ServiceError):
    row = codes.DEADLINE_EXCEEDED


def validation_failed(errors: Sequence[Mapping[str, Any]]) -> ValidationFailed:
    """The first of pydantic's (or FastAPI's) validation errors, as ``loc: msg``."""
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ())) or "body"
    return ValidationFailed(f"{where}: {first.get('msg', 'invalid value')}")


def boundary_error(exc: BaseException, what: str = "unhandled error") -> ServiceError:
    """The error a client sees for ``exc`` (``to_service_error``); one that is ours to fix (an
    internal error, not the client's) is logged with its stack as ``what``."""
    err = to_service_error(exc)
    if type(err) is ServiceError:
        log.error(what, exc_info=exc)
    return err


def to_service_error(exc: BaseException) -> ServiceError:
    """Map any exception to the error a client sees (never a stack trace)."""
    from service.engine.errors import ImageError, ImageTooLarge

    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ImageTooLarge):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, ImageError):
        return BadRequest(str(exc), row=codes.ERRORS.get(exc.code, codes.INVALID_IMAGE))
    if isinstance(exc, QueueFull):
        return Overloaded("the inference queue is full; retry later", retry_after=exc.retry_after)
    if isinstance(exc, ShuttingDown):
        return Draining("the service is shutting down; retry on another instance", retry_after=1.0)
    if isinstance(exc, BatchDeadlineExceeded):
        return DeadlineExceeded("the request's deadline passed before inference; it was not run")
    if isinstance(exc, BatchingError):
        return ServiceError("inference failed")
    return ServiceError("internal error")

"""The service's errors and the one place where foreign errors become HTTP answers.

    ServiceError (500 internal_error)
    ├── BadRequest (400 invalid_image, image_dimensions)
    ├── Unauthorized (401 unauthorized)
    ├── NotFound (404 not_found)
    ├── PayloadTooLarge (413 payload_too_large)
    ├── HeaderTooLarge (431 header_too_large)
    ├── UnsupportedMediaType (415 unsupported_media_type)
    ├── ValidationFailed (422 validation_error)
    ├── RateLimited (429 rate_limited, Retry-After)
    ├── Unavailable (503, Retry-After): Overloaded (overloaded), NotReady (not_ready),
    │                                   Draining (draining)
    └── DeadlineExceeded (504 deadline_exceeded)

Engine errors (``service.engine.errors``) and batching errors (``batching``) are mapped by
``to_service_error``; anything else is an internal error whose details stay in the log.
"""

from __future__ import annotations

import math

from batching import BatchingError, QueueFull, ShuttingDown
from batching import DeadlineExceeded as BatchDeadlineExceeded

__all__ = [
    "BadRequest",
    "DeadlineExceeded",
    "Draining",
    "HeaderTooLarge",
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
    "to_service_error",
]


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str = "internal error", *, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class BadRequest(ServiceError):
    status, code = 400, "invalid_image"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class NotFound(ServiceError):
    status, code = 404, "not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class HeaderTooLarge(ServiceError):
    status, code = 431, "header_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(ServiceError):
    status, code = 422, "validation_error"


class RateLimited(ServiceError):
    status, code = 429, "rate_limited"


class Unavailable(ServiceError):
    status, code = 503, "overloaded"

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, retry_after=retry_after, code=code)


class Overloaded(Unavailable):
    code = "overloaded"


class NotReady(Unavailable):
    code = "not_ready"


class Draining(Unavailable):
    code = "draining"


class DeadlineExceeded(ServiceError):
    status, code = 504, "deadline_exceeded"


def to_service_error(exc: BaseException) -> ServiceError:
    """Map any exception to the error a client sees (never a stack trace)."""
    from service.engine.errors import ImageError, ImageTooLarge

    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, ImageTooLarge):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, ImageError):
        return BadRequest(str(exc), code=exc.code)
    if isinstance(exc, QueueFull):
        return Overloaded("the inference queue is full; retry later", retry_after=exc.retry_after)
    if isinstance(exc, ShuttingDown):
        return Draining("the service is shutting down; retry on another instance", retry_after=1.0)
    if isinstance(exc, BatchDeadlineExceeded):
        return DeadlineExceeded("the request's deadline passed before inference; it was not run")
    if isinstance(exc, BatchingError):
        return ServiceError("inference failed")
    return ServiceError("internal error")

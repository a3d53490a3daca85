"""The errors of video streams, in the service's tree (:mod:`service.errors`):

    ServiceError
    ├── NotFound ── StreamNotFound (404 stream_not_found)
    ├── StaleFrame (409 stale_frame)
    └── Unavailable ── TooManyStreams (503 too_many_streams, Retry-After)
"""

from __future__ import annotations

from service.errors import NotFound, ServiceError, Unavailable
from wire import errors as codes

__all__ = ["StaleFrame", "StreamNotFound", "TooManyStreams"]


class StreamNotFound(NotFound):
    row = codes.STREAM_NOT_FOUND


class StaleFrame(ServiceError):
    row = codes.STALE_FRAME


class TooManyStreams(Unavailable):
    row = codes.TOO_MANY_STREAMS

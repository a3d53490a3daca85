"""The error table's gRPC column: which gRPC status each row is answered with over gRPC, and the
trailers that carry the rest (the row's code, when to retry, the request id).

Numbers, not ``grpc.StatusCode``: the balancer and the light install do not import grpcio.
"""

from __future__ import annotations

import enum
from typing import Final

from wire import errors as codes
from wire.errors import ErrorCode

__all__ = [
    "ERROR_CODE_TRAILER",
    "PUSHBACK_TRAILER",
    "GrpcStatus",
    "grpc_status",
    "row_of",
]

ERROR_CODE_TRAILER: Final = "yoloserve-error-code"  # the row's code, e.g. overloaded
PUSHBACK_TRAILER: Final = "grpc-retry-pushback-ms"  # gRPC's retry pushback: when to retry


class GrpcStatus(enum.IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


_BY_CODE: Final[dict[str, GrpcStatus]] = {
    codes.OVERLOADED.code: GrpcStatus.RESOURCE_EXHAUSTED,  # shedding load: retry after pushback
    codes.TOO_MANY_STREAMS.code: GrpcStatus.RESOURCE_EXHAUSTED,
    codes.NOT_READY.code: GrpcStatus.UNAVAILABLE,  # this instance cannot: another one may
    codes.DRAINING.code: GrpcStatus.UNAVAILABLE,
    codes.BACKEND_EXISTS.code: GrpcStatus.ALREADY_EXISTS,
}
_BY_STATUS: Final[dict[int, GrpcStatus]] = {
    400: GrpcStatus.INVALID_ARGUMENT, 401: GrpcStatus.UNAUTHENTICATED, 404: GrpcStatus.NOT_FOUND,
    405: GrpcStatus.UNIMPLEMENTED, 408: GrpcStatus.DEADLINE_EXCEEDED,
    409: GrpcStatus.FAILED_PRECONDITION, 413: GrpcStatus.INVALID_ARGUMENT,
    415: GrpcStatus.INVALID_ARGUMENT, 422: GrpcStatus.INVALID_ARGUMENT,
    429: GrpcStatus.RESOURCE_EXHAUSTED, 431: GrpcStatus.INVALID_ARGUMENT,
    500: GrpcStatus.INTERNAL, 502: GrpcStatus.UNAVAILABLE, 503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.DEADLINE_EXCEEDED,
}
# a status without a row of its own (a foreign server's error) reads as this row
_FALLBACK: Final[dict[GrpcStatus, ErrorCode]] = {
    GrpcStatus.INVALID_ARGUMENT: codes.INVALID_REQUEST, GrpcStatus.NOT_FOUND: codes.NOT_FOUND,
    GrpcStatus.UNAUTHENTICATED: codes.UNAUTHORIZED, GrpcStatus.RESOURCE_EXHAUSTED: codes.OVERLOADED,
    GrpcStatus.UNAVAILABLE: codes.NO_HEALTHY_BACKEND,
    GrpcStatus.DEADLINE_EXCEEDED: codes.DEADLINE_EXCEEDED,
}


def grpc_status(row: ErrorCode) -> GrpcStatus:
    """The gRPC status a row of the table is answered with."""
    return _BY_CODE.get(row.code) or _BY_STATUS.get(row.status, GrpcStatus.INTERNAL)


def row_of(status: int, code: str | None) -> ErrorCode:
    """The row of an error answered over gRPC: by its ``yoloserve-error-code`` trailer, else by
    its status."""
    if code is not None and code in codes.ERRORS:
        return codes.ERRORS[code]
    try:
        return _FALLBACK.get(GrpcStatus(status), codes.INTERNAL_ERROR)
    except ValueError:
        return codes.INTERNAL_ERROR

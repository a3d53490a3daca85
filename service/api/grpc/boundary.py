"""The gRPC front's error boundary: whatever a call raises becomes the gRPC status of its row in
the one error table (``wire.grpc_status``), with trailers for the rest: ``yoloserve-error-code``,
``grpc-retry-pushback-ms`` (when to retry, for 429/503) and ``x-request-id``. A bug is logged
with its stack and answered ``INTERNAL``, never shown."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from service.errors import ServiceError, boundary_error
from wire.grpc_status import ERROR_CODE_TRAILER, PUSHBACK_TRAILER, GrpcStatus, grpc_status
from wire.headers import REQUEST_ID

__all__ = ["STATUS_CODES", "abort", "error_of", "trailers"]

STATUS_CODES: dict[GrpcStatus, grpc.StatusCode] = {
    GrpcStatus(code.value[0]): code for code in grpc.StatusCode}


def error_of(exc: BaseException) -> ServiceError:
    return boundary_error(exc, "gRPC call failed")


def trailers(err: ServiceError, request_id: str) -> tuple[tuple[str, str], ...]:
    out = [(ERROR_CODE_TRAILER, err.code), (REQUEST_ID, request_id)]
    if err.retry_after is not None:
        out.append((PUSHBACK_TRAILER, str(max(1, round(err.retry_after * 1000)))))
    return tuple(out)


async def abort(context: Any, err: ServiceError, request_id: str) -> NoReturn:
    """Ends the call with ``err``'s status (``context.abort`` raises)."""
    await context.abort(STATUS_CODES[grpc_status(err.row)], err.message,
                        trailing_metadata=trailers(err, request_id))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover

"""The one error boundary of the HTTP fronts: whatever a route raises (our errors, the engine's,
the batcher's, FastAPI's validation and HTTP errors, or a bug) becomes the contract's error body
with its status and headers; a bug is logged with its stack, never shown.

``/v1`` and streams answer ``{"error": {"code", "message", "request_id"}}``; ``/v2`` answers the Open
Inference Protocol's ``{"error": "<message>"}`` with the same status (``V2Route``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from batching import BatchingError
from service.engine.errors import EngineError
from service.errors import ServiceError, boundary_error, validation_failed
from wire import errors as codes

__all__ = ["V2Route", "error_response", "install", "v2_error_response"]

_HTTP_ROWS = {400: codes.INVALID_REQUEST, 404: codes.NOT_FOUND, 405: codes.METHOD_NOT_ALLOWED}


def error_response(request: Request, err: ServiceError) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    return Response(err.body(request_id), status_code=err.status,
                    media_type="application/json", headers=err.headers())


def _as_service_error(exc: Exception) -> ServiceError:
    if isinstance(exc, RequestValidationError):
        return validation_failed(exc.errors())
    return boundary_error(exc)


def install(app: FastAPI) -> None:
    """The exception handlers of ``/v1``, streams and the pages."""

    async def on_error(request: Request, exc: Exception) -> Response:
        return error_response(request, _as_service_error(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        fallback = codes.INVALID_REQUEST if exc.status_code < 500 else codes.INTERNAL_ERROR
        row = _HTTP_ROWS.get(exc.status_code, fallback)
        message = "no such route" if row is codes.NOT_FOUND else str(exc.detail)
        response = error_response(request, ServiceError(message, row=row))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    for kind in (ServiceError, EngineError, BatchingError, RequestValidationError, Exception):
        app.add_exception_handler(kind, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http)


def v2_error_response(err: ServiceError) -> Response:
    return Response(orjson.dumps({"error": err.message}), status_code=err.status,
                    media_type="application/json", headers=err.headers())


class V2Route(APIRoute):
    """Answers errors the Open Inference Protocol's way: ``{"error": "..."}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return v2_error_response(_as_service_error(exc))

        return handle

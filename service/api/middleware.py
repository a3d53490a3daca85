"""Plain ASGI middleware: request id, body-size limit while streaming, one access-log line.

The body limit is enforced on the bytes as they arrive: a declared ``Content-Length`` over the
limit is refused before anything is read, and a chunked body is cut off as soon as it passes it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge
from wire.headers import REQUEST_ID
from wire.ids import new_request_id, valid_request_id
from wire.logs import request_id_var

__all__ = ["RequestContextMiddleware"]

access_log = logging.getLogger("yoloserve.access")


class _BodyTooLarge(PayloadTooLarge):
    """Raised from ``receive`` so that the app's error handler answers 413 in our format."""


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, access_log_enabled: bool = True) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get(REQUEST_ID)
        request_id = given if given is not None and valid_request_id(given) else new_request_id()
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})
        scope["state"]["request_id"] = request_id
        log_fields: dict[str, Any] = {}
        scope["state"]["log"] = log_fields
        started = time.perf_counter()
        status = [500]
        try:
            await self._handle(scope, receive, send, headers, request_id, status)
        finally:
            if self.access_log_enabled:
                self._log(scope, status[0], started, log_fields)
            request_id_var.reset(token)

    async def _handle(self, scope: Scope, receive: Receive, send: Send,
                      headers: dict[str, str], request_id: str, status: list[int]) -> None:
        started_response = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started_response
            if message["type"] == "http.response.start":
                started_response = True
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (REQUEST_ID.encode(), request_id.encode())]
            await send(message)

        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(send_wrapper, request_id)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(f"the body is over the limit of {self.max_body_bytes} bytes")
            return message

        try:
            await self.app(scope, receive_limited, send_wrapper)
        except _BodyTooLarge:
            if not started_response:
                await self._refuse(send_wrapper, request_id)

    async def _refuse(self, send: Send, request_id: str) -> None:
        err = PayloadTooLarge(f"the body is over the limit of {self.max_body_bytes} bytes")
        body = err.body(request_id)
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _log(self, scope: Scope, status: int, started: float, fields: dict[str, Any]) -> None:
        route = scope.get("route")
        access_log.info(
            "request",
            extra={
                "request_id": scope["state"].get("request_id"),
                "method": scope.get("method"),
                "path": scope.get("path"),
                "route": getattr(route, "path", scope.get("path")),
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "client": (scope.get("client") or ("", 0))[0],
                **fields,
            },
        )

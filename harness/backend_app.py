"""A fake backend for the load balancer's tests and benchmark: a plain ASGI app run by uvicorn.

Behaviour from the environment:
  BACKEND_NAME         echoed as ``backend`` in every answer (default "backend")
  BACKEND_DELAY_MS     delay before answering /v1/detect (default 0)
  BACKEND_MODE         ok | overloaded (503 + Retry-After, health "overloaded") | hang (detect
                       never answers) | draining | starting (health 503 with that status) |
                       error (detect answers 500) | cut (detect sends its head, then the
                       connection is closed before the body)
  BACKEND_RETRY_AFTER  Retry-After seconds in overloaded mode (default 1)

Routes: GET /health/live, GET /health/ready, POST /v1/detect (echoes what it received),
GET /stream?chunks=N (a chunked answer), GET /bytes?n=N (N bytes with a Content-Length),
WebSocket /ws and /v1/streams/{id}/ws (echoes each message as ``{"backend", "path",
"text"|"bytes"}``; "close" closes), WebSocket /ws-reject (403).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

NAME = os.environ.get("BACKEND_NAME", "backend")
DELAY = float(os.environ.get("BACKEND_DELAY_MS", "0")) / 1000.0
MODE = os.environ.get("BACKEND_MODE", "ok")
RETRY_AFTER = os.environ.get("BACKEND_RETRY_AFTER", "1")
ECHOED = (
    b"x-request-id",
    b"x-request-timeout-ms",
    b"x-forwarded-for",
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"x-custom",
)


async def _json(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: list[Any] | None = None,
    request_id: bytes | None = None,
) -> None:
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    head += headers or []
    if request_id:
        head.append((b"x-request-id", request_id))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _ready(send: Send) -> None:
    if MODE in ("draining", "starting", "overloaded"):
        await _json(send, 503, {"status": MODE}, [(b"retry-after", RETRY_AFTER.encode())])
    else:
        await _json(send, 200, {"status": "ready", "queue_depth": 0, "inflight_batches": 0})


async def _detect(scope: Scope, receive: Receive, send: Send) -> None:
    headers = dict(scope["headers"])
    body = await _read_body(receive)
    rid = headers.get(b"x-request-id")
    if MODE == "overloaded":
        error = {"code": "overloaded", "message": "queue full", "request_id": (rid or b"").decode()}
        extra = [(b"retry-after", RETRY_AFTER.encode())]
        await _json(send, 503, {"error": error, "backend": NAME}, extra, request_id=rid)
        return
    if MODE == "hang":
        await asyncio.sleep(3600)
    if MODE == "error":
        await _json(send, 500, {"error": {"code": "internal"}, "backend": NAME}, request_id=rid)
        return
    if MODE == "cut":  # as a server that dies between writing its head and its body
        head = [(b"content-type", b"application/json"), (b"content-length", b"100")]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        raise ConnectionAbortedError("cut mid-answer")  # uvicorn closes the connection
    if DELAY:
        await asyncio.sleep(DELAY)
    echo = {k.decode(): v.decode() for k, v in headers.items() if k in ECHOED}
    answer = {
        "backend": NAME,
        "headers": echo,
        "body_bytes": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "path": scope["path"],
        "query": scope["query_string"].decode(),
    }
    await _json(send, 200, answer, request_id=rid)


async def _stream(scope: Scope, send: Send) -> None:
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    chunks = int(query.get("chunks", "3"))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    for i in range(chunks):
        await send({"type": "http.response.body", "body": f"{NAME}-{i}\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _bytes(scope: Scope, send: Send) -> None:
    """``/bytes?n=N``: N bytes (``0123456789`` repeated), sent in pieces of about 64 KiB."""
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    size = int(query.get("n", "0"))
    head = [(b"content-type", b"application/octet-stream"), (b"content-length", str(size).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    piece = b"0123456789" * 6553
    for start in range(0, size, len(piece)):
        await send({"type": "http.response.body", "body": piece[: size - start], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    if scope["path"] == "/ws-reject":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "close":
            await send({"type": "websocket.close", "code": 1000})
            return
        echo: dict[str, Any] = {"backend": NAME, "path": scope["path"]}
        if message.get("text") is not None:
            echo["text"] = message["text"]
        else:
            data = message.get("bytes") or b""
            echo["bytes"] = len(data)
            echo["sha256"] = hashlib.sha256(data).hexdigest()
        await send({"type": "websocket.send", "text": json.dumps(echo)})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await _websocket(scope, receive, send)
        return
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/health/live":
        await _json(send, 200, {"status": "alive", "backend": NAME})
    elif path == "/health/ready":
        await _ready(send)
    elif path.startswith("/v1/"):
        await _detect(scope, receive, send)
    elif path == "/stream":
        await _stream(scope, send)
    elif path == "/bytes":
        await _bytes(scope, send)
    else:
        await _json(send, 404, {"error": {"code": "not_found"}})

"""The admin API (aiohttp, its own port): status, backend changes, Prometheus metrics, and the
status page at ``/`` (its files under ``/static/``).

A bearer token is required when one is configured, compared in constant time. The page's files
are public (they hold no data); the page sends the token it is given to ``/lb/status``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from loadbalancer.cluster import Cluster
from loadbalancer.discovery import Discovery
from loadbalancer.errors import AdminError
from loadbalancer.metrics import CONTENT_TYPE, render
from loadbalancer.settings import BackendSpec
from loadbalancer.speed import speed_factor
from loadbalancer.stats import ProxyStats
from wire import errors as codes
from wire.errors import ErrorCode
from wire.headers import REQUEST_ID
from wire.ids import new_request_id, valid_request_id

__all__ = ["create_admin_app"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_ADMIN_BODY = 65_536
CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster", Cluster)
STATS: web.AppKey[ProxyStats] = web.AppKey("stats", ProxyStats)
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("registry", CollectorRegistry)
DISCOVERY: web.AppKey[Discovery | None] = web.AppKey("discovery")
GRPC_CLUSTER: web.AppKey[Cluster | None] = web.AppKey("grpc_cluster")


class PatchBackend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: int | None = Field(None, ge=1, le=10_000)
    drain: bool | None = None


def create_admin_app(
    cluster: Cluster,
    stats: ProxyStats,
    registry: CollectorRegistry,
    token: str | None,
    discovery: Discovery | None = None,
    *,
    grpc_cluster: Cluster | None = None,
) -> web.Application:
    app = web.Application(
        middlewares=[_errors_middleware, _auth_middleware(token)], client_max_size=MAX_ADMIN_BODY
    )
    app[CLUSTER] = cluster
    app[STATS] = stats
    app[REGISTRY] = registry
    app[DISCOVERY] = discovery
    app[GRPC_CLUSTER] = grpc_cluster
    app.router.add_get("/lb/status", status)
    app.router.add_post("/lb/backends", add_backend)
    app.router.add_patch("/lb/backends/{id}", patch_backend)
    app.router.add_delete("/lb/backends/{id}", delete_backend)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", status_page)
    app.router.add_static("/static/", _STATIC)
    return app


_STATIC = Path(str(resources.files("loadbalancer") / "static"))
_PUBLIC = ("/", "/static/")  # the page's files; the data behind them keeps the token
# the page fetches nothing from elsewhere, and the browser enforces it
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'; form-action 'none'",
    "Cache-Control": "no-cache",
}


def _public(path: str) -> bool:
    return path == _PUBLIC[0] or path.startswith(_PUBLIC[1])


_HTTP_ROWS = {404: codes.NOT_FOUND, 405: codes.METHOD_NOT_ALLOWED, 413: codes.PAYLOAD_TOO_LARGE,
              415: codes.UNSUPPORTED_MEDIA_TYPE}


def _error(row: ErrorCode, message: str, request: web.Request) -> web.Response:
    given = request.headers.get(REQUEST_ID)
    rid = given if valid_request_id(given) and given is not None else new_request_id()
    return web.Response(body=row.body(message, rid), status=row.status,
                        content_type="application/json", headers={REQUEST_ID: rid})


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Maps every refusal to the project's JSON error format."""
    try:
        return await handler(request)
    except AdminError as exc:
        return _error(exc.row, str(exc), request)
    except ValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(codes.VALIDATION_ERROR, detail, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        fallback = codes.INVALID_REQUEST if exc.status < 500 else codes.INTERNAL_ERROR
        return _error(_HTTP_ROWS.get(exc.status, fallback), exc.text or exc.reason, request)


def _auth_middleware(token: str | None) -> Middleware:
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and not _public(request.path):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                response = _error(codes.UNAUTHORIZED, "a valid bearer token is required", request)
                response.headers["WWW-Authenticate"] = 'Bearer realm="yoloserve-lb"'
                return response
        return await handler(request)

    return auth


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise AdminError(f"the body is not JSON: {exc}") from exc


async def status(request: web.Request) -> web.Response:
    cluster, stats = request.app[CLUSTER], request.app[STATS]
    now, wall = time.monotonic(), time.time()
    backends = [b.snapshot(now, wall) for b in cluster.backends.values()]
    for backend, snapshot in zip(cluster.backends.values(), backends, strict=True):
        factor = speed_factor(cluster.policy, backend)  # the load-aware policies: slower weigh less
        if factor is not None:
            snapshot["speed_factor"] = round(factor, 4)
    cluster.candidates(now)  # refreshes the panic flag
    body: dict[str, Any] = {
        "policy": cluster.policy.name,
        "panic": cluster.panic,
        "inflight": stats.active,
        "client_connections": stats.client_connections,
        "backends": backends,
    }
    discovery = request.app[DISCOVERY]
    if discovery is not None:
        body["discovery"] = discovery.snapshot()
    grpc = request.app[GRPC_CLUSTER]
    if grpc is not None:  # the gRPC backends, balanced per call on --grpc-port
        grpc.candidates(now)
        body["grpc"] = {"policy": grpc.policy.name, "panic": grpc.panic,
                        "backends": [b.snapshot(now, wall) for b in grpc.backends.values()]}
    return web.json_response(body)


async def add_backend(request: web.Request) -> web.Response:
    spec = BackendSpec.model_validate(await _json(request))
    backend = request.app[CLUSTER].add(spec, time.monotonic())
    return web.json_response(backend.snapshot(time.monotonic(), time.time()), status=201)


async def patch_backend(request: web.Request) -> web.Response:
    change = PatchBackend.model_validate(await _json(request))
    cluster = request.app[CLUSTER]
    backend = cluster.update(request.match_info["id"], weight=change.weight, drain=change.drain)
    return web.json_response(backend.snapshot(time.monotonic(), time.time()))


async def delete_backend(request: web.Request) -> web.Response:
    backend = request.app[CLUSTER].remove(request.match_info["id"])
    return web.json_response(backend.snapshot(time.monotonic(), time.time()))


async def status_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(_STATIC / "status.html", headers=_PAGE_HEADERS)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=render(request.app[REGISTRY]), headers={"Content-Type": CONTENT_TYPE})

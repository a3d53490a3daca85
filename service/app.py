"""The FastAPI application factory: ``create_app(settings)``.

The lifespan loads the model once per process (in a thread, so ``/health/live`` answers while it
loads), warms every batch size up, starts the batcher, and on shutdown drains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_fastapi_instrumentator import Instrumentator

from service.api import boundary, dashboard, health, redoc
from service.api.middleware import RequestContextMiddleware
from service.api.streams import routes as streams
from service.api.v1 import classify, detect, model, models
from service.api.v2 import routes as v2_routes
from service.heap import GcPauses, freeze_loaded_heap, thaw_heap
from service.metrics import ServiceMetrics
from service.runtime.state import AppState, Lifecycle
from service.runtime.streams import PeerSetup, SavedStreams, StreamRegistry
from service.settings import Settings
from service.shared import open_store, rate_limiter

if TYPE_CHECKING:
    from service.api.grpc import GrpcServer

__all__ = ["create_app"]

log = logging.getLogger("yoloserve")


def _single_threaded_torch() -> None:
    """Beside ONNX Runtime or OpenVINO, torch only post-processes small tensors (NMS): a pool of
    OpenMP threads that spin after each operation would take CPU from inference and the event loop."""
    import torch

    torch.set_num_threads(1)


async def _load(state: AppState) -> None:
    from service.runtime.registry import load_models

    # streams first: under --workers N a worker takes its share of the streams as soon as it
    # listens, so every worker should listen before the first of them is ready
    state.streams = await _start_streams(state)
    registry = await load_models(state.settings, state.metrics, state.shared_store)
    if registry.backends <= {"onnx", "openvino"}:
        _single_threaded_torch()
    state.metrics.gc_frozen.set(freeze_loaded_heap())
    state.gc_pauses.start()
    state.models = registry
    state.lifecycle = Lifecycle.READY
    log.info("ready", extra={"models": list(registry.models), "default": registry.default})


async def _start_streams(state: AppState) -> StreamRegistry:
    s = state.settings
    store = state.shared_store  # with Redis, a stream's tracker state outlives this process
    streams = StreamRegistry(state.metrics, max_streams=s.max_streams, ttl_s=s.stream_ttl_s,
                             threads=s.stream_threads, peers=PeerSetup.from_env(),
                             saved=None if store is None else SavedStreams(store, s.stream_ttl_s))
    await streams.start()
    return streams


async def _start_grpc(state: AppState, version: str) -> GrpcServer | None:
    """The Open Inference Protocol over gRPC on ``--grpc-port``, when set."""
    s = state.settings
    if s.grpc_port is None:
        return None
    from service.api.grpc import GrpcServer  # grpcio is imported only when gRPC is on

    server = GrpcServer(state, version)
    await server.start(s.host, s.grpc_port)
    return server


def _exit_if_load_failed(task: asyncio.Task[None]) -> None:
    """A service that cannot load its model stops, so that its supervisor sees it fail."""
    if task.cancelled() or task.exception() is None:
        return
    log.critical("the model could not be loaded; stopping", exc_info=task.exception())
    os.kill(os.getpid(), signal.SIGTERM)


def _version() -> str:
    try:
        return importlib.metadata.version("yoloserve")
    except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "0+unknown"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = ServiceMetrics()
    store = open_store(settings, metrics.shared)  # None without YOLOSERVE_REDIS_URL
    state = AppState(settings=settings, metrics=metrics, rate_limiter=rate_limiter(settings, store),
                     gc_pauses=GcPauses(metrics), shared_store=store)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the model loads in the background when allowed, so that the port is open and
        # /health/live and /health/ready ("starting") answer while it loads and warms up
        state.loading = asyncio.create_task(_load(state), name="load-model")
        state.loading.add_done_callback(_exit_if_load_failed)
        if not settings.load_in_background:
            await asyncio.shield(state.loading)
        grpc = await _start_grpc(state, app.version)
        try:
            yield
        finally:
            # 1. refuse new work; 2. finish what the batcher holds within the timeout; 3. close
            state.lifecycle = Lifecycle.DRAINING
            if grpc is not None:  # gRPC calls in flight finish, streams end
                await grpc.stop(settings.drain_timeout_s)
            if not state.loading.done():
                state.loading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await state.loading
            if state.models is not None:
                await state.models.close(settings.drain_timeout_s)
            if state.streams is not None:
                await state.streams.close()
            if state.shared_store is not None:
                await state.shared_store.aclose()
            state.gc_pauses.stop()
            thaw_heap()
            state.lifecycle = Lifecycle.STOPPED
            log.info("stopped")

    # Swagger UI and ReDoc from files inside the package: the pages render with no network
    app = FastAPIOffline(
        title="yoloserve", version=_version(), lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        redoc_url=None,  # served by service.api.redoc, without the bundle's one outside address
        description="YOLO object detection with dynamic batching. Errors are "
                    '`{"error": {"code", "message", "request_id"}}`.',
    )
    app.state.yoloserve = state
    app.include_router(detect.router)
    app.include_router(classify.router)
    app.include_router(model.router)
    app.include_router(streams.router)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(v2_routes.router)
    app.include_router(dashboard.router)
    app.include_router(redoc.router)
    app.mount("/static", dashboard.static_files(), name="static")
    boundary.install(app)
    Instrumentator(registry=metrics.registry, excluded_handlers=["/metrics"]).instrument(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
                       access_log_enabled=settings.access_log)
    return app

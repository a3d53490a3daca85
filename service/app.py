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

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi_offline import FastAPIOffline
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import ServiceError, ValidationFailed, to_service_error
from service.heap import GcPauses, freeze_loaded_heap, thaw_heap
from service.metrics import ServiceMetrics
from service.middleware import RequestContextMiddleware
from service.ratelimit import RateLimiter
from service.routes import detect, health, model, streams
from service.settings import Settings
from service.state import AppState, Lifecycle
from service.streams import StreamRegistry
from wire import errors as codes

__all__ = ["create_app"]

log = logging.getLogger("yoloserve")


def _error_response(request: Request, err: ServiceError) -> Response:
    request_id = request.scope.get("state", {}).get("request_id")
    return Response(err.body(request_id), status_code=err.status,
                    media_type="application/json", headers=err.headers())


_HTTP_ROWS = {400: codes.INVALID_REQUEST, 404: codes.NOT_FOUND, 405: codes.METHOD_NOT_ALLOWED}


def _install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(request: Request, exc: Exception) -> Response:
        err = to_service_error(exc)
        if type(err) is ServiceError:
            log.error("unhandled error", exc_info=exc)
        return _error_response(request, err)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error_response(request, ValidationFailed(f"{where}: {first.get('msg', 'invalid')}"))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        fallback = codes.INVALID_REQUEST if exc.status_code < 500 else codes.INTERNAL_ERROR
        row = _HTTP_ROWS.get(exc.status_code, fallback)
        message = "no such route" if row is codes.NOT_FOUND else str(exc.detail)
        response = _error_response(request, ServiceError(message, row=row))
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    from batching import BatchingError
    from service.engine.errors import EngineError

    for kind in (ServiceError, EngineError, BatchingError):
        app.add_exception_handler(kind, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_service_error)


def _single_threaded_torch() -> None:
    """Beside ONNX Runtime, torch only post-processes small tensors (NMS): a pool of OpenMP threads
    that spin after each operation would take CPU from inference and the event loop."""
    import torch

    torch.set_num_threads(1)


async def _load(state: AppState) -> None:
    from service.compute import plan_compute
    from service.engine import Engine, ImageLimits
    from service.inference import Inferencer

    s = state.settings
    limits = ImageLimits(max_pixels=s.max_pixels, min_side=s.min_side, max_side=s.max_side)
    plan = await asyncio.to_thread(plan_compute, s)  # may import torch to look for CUDA
    engine = await asyncio.to_thread(
        Engine.load, s.model, backend=plan.backend, device=plan.device, half=s.half,
        limits=limits, threads=plan.threads, spin=s.spin,
    )
    if engine.meta.backend == "onnx":
        _single_threaded_torch()
    if s.warmup:
        await asyncio.to_thread(engine.warmup, s.max_batch_size)
    state.metrics.gc_frozen.set(freeze_loaded_heap())
    state.gc_pauses.start()
    state.metrics.set_model(engine.meta)
    inferencer = Inferencer(engine, s, state.metrics, concurrent_batches=plan.concurrent_batches)
    await inferencer.start()
    state.streams = await _start_streams(state)
    state.inferencer = inferencer
    state.lifecycle = Lifecycle.READY
    meta = engine.meta
    log.info("ready", extra={"model": meta.name, "version": meta.version, "backend": meta.backend,
                             "device": meta.device, "precision": meta.precision,
                             "concurrent_batches": plan.concurrent_batches,
                             "threads": plan.threads})


async def _start_streams(state: AppState) -> StreamRegistry:
    s = state.settings
    streams = StreamRegistry(state.metrics, max_streams=s.max_streams, ttl_s=s.stream_ttl_s,
                             threads=s.stream_threads)
    await streams.start()
    return streams


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
    limiter = (RateLimiter(settings.rate_limit_rps, settings.rate_limit_burst)
               if settings.rate_limit_rps else None)
    state = AppState(settings=settings, metrics=metrics, rate_limiter=limiter,
                     gc_pauses=GcPauses(metrics))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the model loads in the background when allowed, so that the port is open and
        # /health/live and /health/ready ("starting") answer while it loads and warms up
        state.loading = asyncio.create_task(_load(state), name="load-model")
        state.loading.add_done_callback(_exit_if_load_failed)
        if not settings.load_in_background:
            await asyncio.shield(state.loading)
        try:
            yield
        finally:
            # 1. refuse new work; 2. finish what the batcher holds within the timeout; 3. close
            state.lifecycle = Lifecycle.DRAINING
            if not state.loading.done():
                state.loading.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await state.loading
            if state.inferencer is not None:
                await state.inferencer.close(settings.drain_timeout_s)
            if state.streams is not None:
                await state.streams.close()
            state.gc_pauses.stop()
            thaw_heap()
            state.lifecycle = Lifecycle.STOPPED
            log.info("stopped")

    # Swagger UI and ReDoc from files inside the package: the pages render with no network
    app = FastAPIOffline(
        title="yoloserve", version=_version(), lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        description="YOLO object detection with dynamic batching. Errors are "
                    '`{"error": {"code", "message", "request_id"}}`.',
    )
    app.state.yoloserve = state
    app.include_router(detect.router)
    app.include_router(model.router)
    app.include_router(streams.router)
    app.include_router(health.router)
    _install_error_handlers(app)
    Instrumentator(registry=metrics.registry, excluded_handlers=["/metrics"]).instrument(app)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes,
                       access_log_enabled=settings.access_log)
    return app

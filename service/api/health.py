"""``GET /health/live``, ``GET /health/ready`` and ``GET /metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from service.api.deps import StateDep
from service.metrics import CONTENT_TYPE_LATEST
from service.runtime.state import Lifecycle
from wire.errors import retry_after_header
from wire.headers import RETRY_AFTER
from wire.schemas import HealthResponse

__all__ = ["router"]

router = APIRouter(tags=["health"])

_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthResponse, "description": "starting, draining or overloaded",
          "headers": {"Retry-After": {"schema": {"type": "integer"}}}}
}


@router.get("/health/live", response_model=HealthResponse)
async def live() -> HealthResponse:
    return HealthResponse(status="alive")


@router.get("/health/ready", response_model=HealthResponse, responses=_NOT_READY)
async def ready(state: StateDep, response: Response) -> HealthResponse:
    models = state.models
    # every model's queue and passes: the device and admission are the process's
    depth = models.device.queued if models else 0
    inflight = models.inflight_batches if models else 0
    status = state.lifecycle.value
    retry_after = 1.0
    if state.lifecycle is Lifecycle.READY and models is not None and models.admission.overloaded:
        status = "overloaded"
        retry_after = models.admission.retry_after()
    if status != "ready":
        response.status_code = 503
        response.headers[RETRY_AFTER] = retry_after_header(retry_after)
    extra = {"max_queue": state.settings.max_queue}
    if models is not None:
        extra["max_batch_size"] = models.default_model.inferencer.batcher.effective_max_batch_size
    return HealthResponse(status=status, queue_depth=depth, inflight_batches=inflight, **extra)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "Prometheus text"}})
async def metrics(state: StateDep) -> Response:
    models = state.models
    if models is not None:
        state.metrics.update_gpu_memory(models.default_model.inferencer.meta.device)
        device = models.device
        state.metrics.update_device(device.slots, device.busy, device.peak,
                                    models.admission.admitted)
    state.gc_pauses.flush()  # the collections since the last periodic flush
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""``GET /v1/model`` and ``GET /v1/classes``."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import InferencerDep
from service.api.docs import errors
from service.api.render import evaluation
from service.runtime.inferencer import Inferencer
from wire.schemas import ClassesResponse, ModelInfo

__all__ = ["describe", "router"]

router = APIRouter(prefix="/v1", tags=["model"])


def describe(inferencer: Inferencer) -> ModelInfo:
    meta = inferencer.meta
    settings = inferencer.settings
    return ModelInfo(
        name=meta.name, version=meta.version, backend=meta.backend, device=meta.device,
        precision=meta.precision, input_size=meta.input_size, letterbox=meta.letterbox,
        task=meta.task,
        classes={str(k): v for k, v in meta.classes.items()},
        max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
        evaluation=evaluation(meta.precision, inferencer.evaluation),
    )


@router.get("/model", response_model=ModelInfo, responses=errors(503))
async def model_info(inferencer: InferencerDep) -> ModelInfo:
    return describe(inferencer)


@router.get("/classes", response_model=ClassesResponse, responses=errors(503))
async def classes(inferencer: InferencerDep) -> ClassesResponse:
    return ClassesResponse(classes={str(k): v for k, v in inferencer.classes.items()})

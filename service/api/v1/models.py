"""Several models: ``GET /v1/models``, ``GET /v1/models/{name}`` and the detection routes of one
model, ``/v1/models/{name}/detect``, ``/detect/batch`` and ``/annotate`` (an alias's name picks
one of its models per request)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response

from service.api.deps import AuthDep, DeadlineDep, QueryParamsDep, RegistryDep, StateDep
from service.api.docs import BATCH_BODY, DETECT_BODY, errors
from service.api.v1 import detect
from service.api.v1.classify import CLASSIFY_ERRORS, classify_image
from service.api.v1.model import describe
from service.runtime.inferencer import Inferencer
from wire.schemas import (
    BatchResponse,
    ClassificationResult,
    DetectionResult,
    ModelInfo,
    ModelsResponse,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1/models", tags=["models"])

_NAME = Path(description="A model's name, or an alias", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ERRORS = errors(400, 401, 404, 413, 415, 422, 429, 503, 504)


async def _named(name: Annotated[str, _NAME], registry: RegistryDep) -> Inferencer:
    return registry.get(name).inferencer


NamedDep = Annotated[Inferencer, Depends(_named)]


@router.get("", response_model=ModelsResponse, responses=errors(503))
async def list_models(registry: RegistryDep) -> ModelsResponse:
    return ModelsResponse(
        models=[describe(m.inferencer) for m in registry.models.values()],
        default=registry.default,
        aliases={name: dict(a.targets) for name, a in registry.aliases.items()},
    )


@router.get("/{name}", response_model=ModelInfo, responses=errors(404, 422, 503))
async def model_info(inferencer: NamedDep) -> ModelInfo:
    return describe(inferencer)


@router.post("/{name}/detect", response_model=DetectionResult, responses=_ERRORS,
             openapi_extra=DETECT_BODY, summary="Detect objects in one image with this model")
async def model_detect(request: Request, inferencer: NamedDep, query: QueryParamsDep,
                       state: StateDep, deadline: DeadlineDep, _auth: AuthDep) -> Response:
    return await detect.detect(request, inferencer, query, state, deadline, _auth)


@router.post("/{name}/detect/batch", response_model=BatchResponse, responses=_ERRORS,
             openapi_extra=BATCH_BODY, summary="Detect objects in up to 64 images with this model")
async def model_detect_batch(request: Request, inferencer: NamedDep, query: QueryParamsDep,
                             state: StateDep, deadline: DeadlineDep, _auth: AuthDep) -> Response:
    return await detect.detect_batch(request, inferencer, query, state, deadline, _auth)


@router.post("/{name}/annotate", response_class=Response, openapi_extra=DETECT_BODY,
             responses={**detect.ANNOTATE_RESPONSES, 404: _ERRORS[404]},
             summary="Draw the boxes and labels this model detects on the image")
async def model_annotate(request: Request, inferencer: NamedDep, query: QueryParamsDep,
                         state: StateDep, deadline: DeadlineDep, _auth: AuthDep) -> Response:
    return await detect.annotate(request, inferencer, query, state, deadline, _auth)


@router.post("/{name}/classify", response_model=ClassificationResult,
             responses={**CLASSIFY_ERRORS, 404: _ERRORS[404]}, openapi_extra=DETECT_BODY,
             summary="Classify one image with this model (classifier models)")
async def model_classify(request: Request, inferencer: NamedDep, query: QueryParamsDep,
                         state: StateDep, deadline: DeadlineDep, _auth: AuthDep) -> Response:
    return await classify_image(request, inferencer, query, state, deadline)

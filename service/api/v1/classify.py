"""``POST /v1/classify``: a classifier's five most likely classes for one image."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from service.api.bodies import read_single, resolve_params
from service.api.deps import AuthDep, DeadlineDep, InferencerDep, QueryParams, QueryParamsDep, StateDep
from service.api.docs import DETECT_BODY, errors
from service.api.render import classification
from service.runtime.inferencer import Inferencer
from service.runtime.state import AppState
from wire.schemas import ClassificationResult

__all__ = ["CLASSIFY_ERRORS", "classify_image", "router"]

router = APIRouter(prefix="/v1", tags=["classification"])

CLASSIFY_ERRORS = errors(400, 401, 413, 415, 422, 429, 503, 504)


async def classify_image(request: Request, inferencer: Inferencer, query: QueryParams,
                         state: AppState, deadline: float | None) -> Response:
    inferencer.require("classify")
    upload, body_params = await read_single(request, state.settings)
    params = resolve_params(query.values, body_params, inferencer.classes)
    result = await inferencer.detect(upload.data, upload.name, params, deadline)
    request.scope["state"]["log"].update(batch_size=result.batch_size, cached=result.cached)
    return Response(orjson.dumps(classification(result).model_dump(mode="json")),
                    media_type="application/json")


@router.post("/classify", response_model=ClassificationResult, responses=CLASSIFY_ERRORS,
             openapi_extra=DETECT_BODY, summary="Classify one image (classifier models)")
async def classify(request: Request, inferencer: InferencerDep, query: QueryParamsDep,
                   state: StateDep, deadline: DeadlineDep, _auth: AuthDep) -> Response:
    return await classify_image(request, inferencer, query, state, deadline)

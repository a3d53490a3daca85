"""``POST /v1/detect``, ``/v1/detect/batch`` and ``/v1/annotate``."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request, Response

from service.api import render
from service.api.bodies import Upload, read_batch, read_single, resolve_params
from service.api.deps import AuthDep, DeadlineDep, InferencerDep, QueryParams, QueryParamsDep, StateDep
from service.api.docs import BATCH_BODY, DETECT_BODY, errors
from service.api.v1.annotate import draw
from service.errors import boundary_error
from service.runtime.inferencer import Inferencer
from service.runtime.result import Result
from service.runtime.state import AppState
from wire.schemas import BatchResponse, DetectionResult, ErrorDetail

__all__ = ["ANNOTATE_RESPONSES", "router"]

router = APIRouter(prefix="/v1", tags=["detection"])

_ERRORS = errors(400, 401, 413, 415, 422, 429, 503, 504)


_BINARY = {"schema": {"type": "string", "format": "binary"}}


def _jpeg_media_type(accept: str) -> str:
    """``image/jpeg``, unless the caller asks for raw bytes only (as generated clients do)."""
    wanted = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if "application/octet-stream" in wanted and not wanted & {"image/jpeg", "image/*", "*/*"}:
        return "application/octet-stream"
    return "image/jpeg"


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


def _note(request: Request, **fields: object) -> None:
    request.scope["state"]["log"].update(fields)


async def _single(request: Request, inferencer: Inferencer, query: QueryParams, state: AppState,
                  deadline: float | None) -> tuple[Upload, Result]:
    """Read one image and its parameters, and detect: the common part of detect and annotate."""
    inferencer.require("detect", "segment", "pose", "obb")
    upload, body_params = await read_single(request, state.settings)
    params = resolve_params(query.values, body_params, inferencer.classes)
    return upload, await inferencer.detect(upload.data, upload.name, params, deadline)


@router.post("/detect", response_model=DetectionResult, responses=_ERRORS,
             openapi_extra=DETECT_BODY, summary="Detect objects in one image")
async def detect(request: Request, inferencer: InferencerDep, query: QueryParamsDep,
                 state: StateDep, deadline: DeadlineDep, _auth: AuthDep) -> Response:
    _, result = await _single(request, inferencer, query, state, deadline)
    _note(request, batch_size=result.batch_size, detections=len(result.detections),
          cached=result.cached)
    return _json(render.result(result).model_dump(mode="json"))


@router.post("/detect/batch", response_model=BatchResponse, responses=_ERRORS,
             openapi_extra=BATCH_BODY, summary="Detect objects in up to 64 images")
async def detect_batch(request: Request, inferencer: InferencerDep, query: QueryParamsDep,
                       state: StateDep, deadline: DeadlineDep, _auth: AuthDep) -> Response:
    inferencer.require("detect", "segment", "pose", "obb")
    uploads, body_params = await read_batch(request, state.settings)
    params = resolve_params(query.values, body_params, inferencer.classes)
    outcomes = await asyncio.gather(
        *(inferencer.detect(u.data, u.name, params, deadline) for u in uploads),
        return_exceptions=True,
    )
    request_id = request.scope["state"]["request_id"]
    items: list[object] = []
    for outcome in outcomes:
        if isinstance(outcome, Result):
            items.append(render.result(outcome).model_dump(mode="json"))
            continue
        if not isinstance(outcome, Exception):
            raise outcome  # CancelledError and other BaseExceptions propagate
        err = boundary_error(outcome, "batch item failed")
        detail = ErrorDetail(code=err.code, message=err.message, request_id=request_id)
        items.append({"error": detail.model_dump(mode="json")})
    _note(request, batch_items=len(uploads))
    return _json({"results": items})


ANNOTATE_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"content": {"image/jpeg": _BINARY, "application/octet-stream": _BINARY},
          "description": "JPEG with boxes (as application/octet-stream when the request's Accept "
                         "prefers it)"},
    **_ERRORS,
}


@router.post("/annotate", response_class=Response, openapi_extra=DETECT_BODY,
             responses=ANNOTATE_RESPONSES,
             summary="Draw detected boxes and labels on the image")
async def annotate(request: Request, inferencer: InferencerDep, query: QueryParamsDep,
                   state: StateDep, deadline: DeadlineDep, _auth: AuthDep) -> Response:
    upload, result = await _single(request, inferencer, query, state, deadline)
    image = await inferencer.decode(upload.data)
    jpeg = await asyncio.get_running_loop().run_in_executor(
        None, draw, image, result.detections)
    _note(request, detections=len(result.detections))
    return Response(jpeg, media_type=_jpeg_media_type(request.headers.get("accept", "")))

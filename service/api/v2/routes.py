"""The Open Inference Protocol v2 over REST: ``/v2``, health, model metadata, readiness, Triton's
configuration extension and ``infer`` (JSON tensors and Triton's binary-data extension).

Errors are the protocol's ``{"error": "<message>"}`` with the status the same condition gets on
``/v1``; a route class turns every error raised while a request is handled into that form.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response

from service.api import oip
from service.api.boundary import V2Route
from service.api.deps import AuthDep, DeadlineDep, RegistryDep, StateDep
from service.api.oip import VERSION, Target
from service.api.v2.schemas import (
    InferenceRequest,
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    ServerMetadata,
    V2Error,
    inline_schema,
)
from service.api.v2.tensors import decode_request, encode_response
from service.runtime.state import Lifecycle
from service.settings import Settings
from wire.errors import retry_after_header
from wire.headers import RETRY_AFTER

__all__ = ["router"]

HEADER_LENGTH = "Inference-Header-Content-Length"

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], route_class=V2Route)

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,67}$"
ModelName = Annotated[str, Path(description="NAME (images in, detections out) or NAME-raw (the "
                                "network itself)", pattern=_NAME_PATTERN)]
_RETRY = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        out[s] = {"model": V2Error, "description": "The error, for people"}
        if s in (429, 503):
            out[s]["headers"] = _RETRY
    return out


async def _target(model_name: ModelName, registry: RegistryDep) -> Target:
    return oip.target(registry, model_name)


TargetDep = Annotated[Target, Depends(_target)]


async def _versioned(
    model_name: ModelName, registry: RegistryDep,
    model_version: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$",
                                       description="1 (or the weights' hash)")],
) -> Target:
    return oip.target(registry, model_name, model_version)


VersionedDep = Annotated[Target, Depends(_versioned)]
_M = "/models/{model_name}"
_V = "/models/{model_name}/versions/{model_version}"


# -- server ------------------------------------------------------------------------------------

@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata(request: Request) -> ServerMetadata:
    return ServerMetadata(name="yoloserve", version=request.app.version,
                          extensions=["binary_tensor_data", "model_configuration"])


@router.get("/health/live", response_model=LiveResponse, summary="Liveness")
async def live() -> LiveResponse:
    return LiveResponse(live=True)


@router.get("/health/ready", response_model=ReadyResponse,
            responses={503: {"model": ReadyResponse, "headers": _RETRY,
                             "description": "starting, draining or overloaded"}},
            summary="Readiness")
async def ready(state: StateDep, response: Response) -> ReadyResponse:
    ok = state.lifecycle is Lifecycle.READY and not state.overloaded
    if not ok:
        response.status_code = 503
        response.headers[RETRY_AFTER] = retry_after_header(1.0)
    return ReadyResponse(ready=ok)


# -- models ------------------------------------------------------------------------------------

def _metadata(target: Target) -> ModelMetadata:
    return ModelMetadata.model_validate(oip.model_metadata(target))


def _config(target: Target, settings: Settings) -> dict[str, Any]:
    return oip.model_config(target, settings)


_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "JSON tensors; or, Triton's binary-data extension, with the "
                       "Inference-Header-Content-Length header: that many bytes of this JSON "
                       "followed by the binary data of the inputs whose parameters give a "
                       "binary_data_size, in order",
        "content": {"application/json": {"schema": inline_schema(InferenceRequest)}},
    }
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
          "description": "JSON, or JSON followed by binary outputs (Inference-Header-Content-Length"
                         " says where the JSON ends)"},
    **_errors(400, 401, 404, 413, 422, 429, 503, 504),
}
_MODEL_ERRORS = _errors(404, 422, 503)


async def _infer(request: Request, target: Target, deadline: float | None) -> Response:
    raw_length = request.headers.get(HEADER_LENGTH)
    if raw_length is not None and not raw_length.isdigit():
        raise oip.invalid(f"{HEADER_LENGTH} must be a number of bytes")
    length = None if raw_length is None else int(raw_length)
    decoded = decode_request(await request.body(), length)
    outputs = await oip.infer(target, decoded, deadline, protocol="v2")
    body, head = encode_response(target.name, VERSION, decoded, outputs)
    if head is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(head)})


@router.get(_M, response_model=ModelMetadata, responses=_MODEL_ERRORS, summary="Model metadata")
async def model_metadata(target: TargetDep) -> ModelMetadata:
    return _metadata(target)


@router.get(_V, response_model=ModelMetadata, responses=_MODEL_ERRORS,
            summary="Model metadata, of one version")
async def model_version_metadata(target: VersionedDep) -> ModelMetadata:
    return _metadata(target)


@router.get(_M + "/ready", response_model=ModelReadyResponse, responses=_MODEL_ERRORS,
            summary="Model readiness")
async def model_ready(target: TargetDep) -> ModelReadyResponse:
    return ModelReadyResponse(name=target.name, ready=True)


@router.get(_V + "/ready", response_model=ModelReadyResponse, responses=_MODEL_ERRORS,
            summary="Model readiness, of one version")
async def model_version_ready(target: VersionedDep) -> ModelReadyResponse:
    return ModelReadyResponse(name=target.name, ready=True)


@router.get(_M + "/config", response_model=dict[str, Any], responses=_MODEL_ERRORS,
            summary="Model configuration (Triton's extension)")
async def model_config(target: TargetDep, state: StateDep) -> dict[str, Any]:
    return _config(target, state.settings)


@router.get(_V + "/config", response_model=dict[str, Any], responses=_MODEL_ERRORS,
            summary="Model configuration, of one version")
async def model_version_config(target: VersionedDep, state: StateDep) -> dict[str, Any]:
    return _config(target, state.settings)


@router.post(_M + "/infer", response_model=InferenceResponse, responses=_INFER_RESPONSES,
             openapi_extra=_INFER_BODY, summary="Inference")
async def model_infer(request: Request, target: TargetDep, deadline: DeadlineDep,
                      _auth: AuthDep) -> Response:
    return await _infer(request, target, deadline)


@router.post(_V + "/infer", response_model=InferenceResponse, responses=_INFER_RESPONSES,
             openapi_extra=_INFER_BODY, summary="Inference, on one version")
async def model_version_infer(request: Request, target: VersionedDep, deadline: DeadlineDep,
                              _auth: AuthDep) -> Response:
    return await _infer(request, target, deadline)

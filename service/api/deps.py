"""FastAPI dependencies, all in one place: state, readiness, API keys, rate limit, parameters.

Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, and
five thread hops per request cost more CPU and latency than the work they do (none of them blocks).
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated, Literal

from fastapi import Depends, Query
from starlette.requests import HTTPConnection

from service.errors import Draining, NotReady, RateLimited, Unauthorized, ValidationFailed
from service.runtime.inferencer import Inferencer
from service.runtime.registry import ModelRegistry
from service.runtime.state import AppState, Lifecycle
from service.runtime.streams import StreamRegistry
from wire.headers import API_KEY, AUTHORIZATION, REQUEST_TIMEOUT_MS
from wire.params import CONF, IOU, MAX_DET

__all__ = [
    "AuthDep",
    "DeadlineDep",
    "InferencerDep",
    "QueryParams",
    "QueryParamsDep",
    "RegistryDep",
    "StateDep",
    "StreamsDep",
    "authorize",
    "check_access",
    "get_state",
    "ready_inferencer",
]


async def get_state(request: HTTPConnection) -> AppState:
    state: AppState = request.app.state.yoloserve
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def ready_inferencer(state: StateDep) -> Inferencer:
    if state.lifecycle is Lifecycle.DRAINING or state.lifecycle is Lifecycle.STOPPED:
        raise Draining("the service is shutting down; retry on another instance", retry_after=1)
    if state.lifecycle is not Lifecycle.READY or state.inferencer is None:
        raise NotReady("the model is still loading; retry shortly", retry_after=2)
    return state.inferencer


InferencerDep = Annotated[Inferencer, Depends(ready_inferencer)]


async def _registry(state: StateDep, _ready: InferencerDep) -> ModelRegistry:
    assert state.models is not None  # the default model is ready, so all of them are
    return state.models


RegistryDep = Annotated[ModelRegistry, Depends(_registry)]


async def _streams(state: StateDep, _ready: InferencerDep) -> StreamRegistry:
    assert state.streams is not None  # started before the service is ready
    return state.streams


StreamsDep = Annotated[StreamRegistry, Depends(_streams)]


def _presented_key(request: HTTPConnection) -> str | None:
    auth = request.headers.get(AUTHORIZATION, "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get(API_KEY)


async def authorize(request: HTTPConnection, state: StateDep) -> str | None:
    """Check the API key (when keys are configured) and the per-client rate limit."""
    key = _presented_key(request)
    await check_access(state, key, request.client.host if request.client else None)
    return key


async def check_access(state: AppState, key: str | None, client: str | None) -> None:
    """The API key presented (when keys are configured) and ``client``'s rate limit, for every
    front: 401 ``unauthorized`` or 429 ``rate_limited``."""
    if state.settings.api_keys:
        given = (key or "").encode()
        ok = False
        for secret in state.settings.api_keys:  # constant time, and every key compared
            ok |= hmac.compare_digest(given, secret.get_secret_value().encode())
        if not ok:
            raise Unauthorized("a valid API key is required (Authorization: Bearer or X-API-Key)")
    if state.rate_limiter is not None:
        wait = await state.rate_limiter.acquire(key or client or "unknown")
        if wait > 0:
            raise RateLimited("rate limit exceeded; slow down", retry_after=wait)


AuthDep = Annotated[str | None, Depends(authorize)]


async def _deadline(request: HTTPConnection, state: StateDep) -> float | None:
    """Absolute monotonic deadline from ``X-Request-Timeout-Ms`` (or the configured default)."""
    raw = request.headers.get(REQUEST_TIMEOUT_MS)
    budget_ms = state.settings.default_timeout_ms
    if raw is not None:
        try:
            budget_ms = float(raw)
        except ValueError:
            raise ValidationFailed("X-Request-Timeout-Ms must be a number of milliseconds") from None
        if not budget_ms == budget_ms or budget_ms < 0:  # NaN or negative
            raise ValidationFailed("X-Request-Timeout-Ms must be a non-negative number")
    return None if budget_ms is None else time.monotonic() + budget_ms / 1000


DeadlineDep = Annotated[float | None, Depends(_deadline)]


class QueryParams:
    """Detection parameters given in the query string (form or JSON fields override them)."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = values


async def _query_params(
    conf: Annotated[float | None, Query(ge=CONF.minimum, le=CONF.maximum,
                                        description=CONF.description)] = None,
    iou: Annotated[float | None, Query(ge=IOU.minimum, le=IOU.maximum,
                                       description=IOU.description)] = None,
    max_det: Annotated[int | None, Query(ge=MAX_DET.minimum, le=MAX_DET.maximum,
                                         description=MAX_DET.description)] = None,
    classes: Annotated[
        list[str] | None,
        Query(description="Class ids or names to keep; repeated or comma-separated"),
    ] = None,
    mask_format: Annotated[
        Literal["polygons", "rle", "none"] | None,
        Query(description="segment models: masks as polygons (default), COCO RLE, or none"),
    ] = None,
) -> QueryParams:
    given = {"conf": conf, "iou": iou, "max_det": max_det, "classes": classes,
             "mask_format": mask_format}
    return QueryParams({k: v for k, v in given.items() if v is not None})


QueryParamsDep = Annotated[QueryParams, Depends(_query_params)]

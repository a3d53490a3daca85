"""OpenAPI pieces shared by the routers: error responses and the two request body formats."""

from __future__ import annotations

from typing import Any

from service.api.bodies import DetectJSONBody
from wire import errors as codes
from wire.params import PARAMS
from wire.schemas import ErrorBody

__all__ = ["BATCH_BODY", "DETECT_BODY", "errors"]

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying",
                                "schema": {"type": "integer"}}}
# the service's own codes, by status (the balancer's and the admin API's are not answered here)
_SERVICE_CODES = (
    codes.INVALID_IMAGE, codes.IMAGE_DIMENSIONS, codes.INVALID_REQUEST, codes.UNAUTHORIZED,
    codes.NOT_FOUND, codes.MODEL_NOT_FOUND, codes.PAYLOAD_TOO_LARGE, codes.UNSUPPORTED_MEDIA_TYPE,
    codes.VALIDATION_ERROR,
    codes.RATE_LIMITED, codes.HEADERS_TOO_LARGE, codes.INTERNAL_ERROR, codes.OVERLOADED,
    codes.NOT_READY, codes.DRAINING, codes.DEADLINE_EXCEEDED,
)


def _describe(status: int) -> str:
    return "; ".join(f"`{row.code}`: {row.when}" for row in _SERVICE_CODES if row.status == status)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses: the error body, what each code means, and
    Retry-After where the answer carries it."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _describe(s)}
        if any(row.retry_after for row in _SERVICE_CODES if row.status == s):
            entry["headers"] = _RETRY_AFTER
        out[s] = entry
    return out


_PARAM_PROPS: dict[str, Any] = {
    **{bound.name: bound.json_schema() for bound in PARAMS},
    "classes": {"type": "string", "description": "Comma-separated class ids or names"},
    "mask_format": {"type": "string", "enum": ["polygons", "rle", "none"],
                    "description": "segment models: masks as polygons (default), COCO RLE, or none"},
}

DETECT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}, **_PARAM_PROPS},
                }
            },
            "application/json": {"schema": DetectJSONBody.model_json_schema()},
        },
    }
}

BATCH_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "minItems": 1, "maxItems": 64,
                                   "items": {"type": "string", "format": "binary"}},
                        **_PARAM_PROPS,
                    },
                }
            }
        },
    }
}

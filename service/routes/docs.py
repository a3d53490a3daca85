"""OpenAPI pieces shared by the routers: error responses and the two request body formats."""

from __future__ import annotations

from typing import Any

from service.bodies import DetectJSONBody
from service.schemas import ErrorBody

__all__ = ["BATCH_BODY", "DETECT_BODY", "errors"]

_DESCRIPTIONS = {
    400: "Not an image, corrupt or truncated, unsupported pixel format, bad base64, or a side "
         "outside the allowed range (`invalid_image`, `image_dimensions`)",
    401: "A valid API key is required (`unauthorized`), when API keys are configured",
    413: "Body or image over the size limit, or too many pixels (`payload_too_large`)",
    415: "Content type neither multipart nor JSON (`unsupported_media_type`)",
    422: "A parameter out of range or of the wrong type, or a missing field (`validation_error`)",
    429: "Per-client rate limit exceeded (`rate_limited`); see Retry-After",
    503: "Queue full, not ready, or draining (`overloaded`, `not_ready`, `draining`); see Retry-After",
    504: "The request's deadline passed before inference (`deadline_exceeded`)",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying",
                                "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[s]}
        if s in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[s] = entry
    return out


_PARAM_PROPS: dict[str, Any] = {
    "conf": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.25},
    "iou": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.7},
    "max_det": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 300},
    "classes": {"type": "string", "description": "Comma-separated class ids or names"},
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
                        "images": {"type": "array", "maxItems": 64,
                                   "items": {"type": "string", "format": "binary"}},
                        **_PARAM_PROPS,
                    },
                }
            }
        },
    }
}

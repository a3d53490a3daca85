"""AWS Lambda entry point: ``service.lambda_handler.handler``, the same app through Mangum.

API Gateway events for any route of the app pass through unchanged. An event whose body is just
an image (base64, as API Gateway delivers binary bodies, with an ``image/*`` content type or none)
is answered as ``POST /v1/detect``, so a function URL or a bare ``{"body": "<base64>"}`` works too.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

__all__ = ["handler"]


@lru_cache(maxsize=1)
def _adapter() -> Any:
    from mangum import Mangum

    from service.app import create_app
    from service.settings import Settings
    from wire.logs import configure_logging

    settings = Settings(load_in_background=False)  # an invocation needs the model at once
    configure_logging(settings.log_format, settings.log_level)
    return Mangum(create_app(settings), lifespan="auto")


def _headers(event: dict[str, Any]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}


def _as_detect_request(event: dict[str, Any]) -> dict[str, Any]:
    """Rewrite a bare-image event into an API Gateway (REST) event for ``POST /v1/detect``."""
    headers = _headers(event)
    body = event.get("body") or ""
    if isinstance(body, bytes | bytearray):
        body = body.decode()
    payload = orjson.dumps({"image": body, "image_name": headers.get("x-image-name", "image")})
    query = event.get("queryStringParameters") or {}
    return {
        "resource": "/v1/detect", "path": "/v1/detect", "httpMethod": "POST",
        "headers": {**(event.get("headers") or {}), "content-type": "application/json"},
        "multiValueHeaders": {}, "queryStringParameters": query,
        "multiValueQueryStringParameters": {k: [v] for k, v in query.items()},
        "requestContext": event.get("requestContext") or {"resourcePath": "/v1/detect",
                                                          "httpMethod": "POST", "stage": "prod"},
        "body": payload.decode(), "isBase64Encoded": False,
    }


def _is_bare_image(event: dict[str, Any]) -> bool:
    content_type = _headers(event).get("content-type", "")
    routed = "httpMethod" in event or "routeKey" in event or "rawPath" in event
    return bool(event.get("body")) and (content_type.startswith("image/") or not routed)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if _is_bare_image(event):
        event = _as_detect_request(event)
    response: dict[str, Any] = _adapter()(event, context)
    return response

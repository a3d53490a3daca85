"""``GET /redoc``: ReDoc from the copy ``fastapi_offline`` ships, with the one address the bundle
would still fetch from elsewhere (the Redocly logo in the sidebar's footer) replaced by an inline
picture, so that the page makes no request off the host."""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_BUNDLE = "/redoc/redoc.standalone.js"
_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
_INLINE_LOGO = (b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' "
                b"height='1'/%3E")


@functools.cache
def _bundle() -> bytes:
    source = resources.files("fastapi_offline") / "static" / "redoc.standalone.js"
    return source.read_bytes().replace(_LOGO, _INLINE_LOGO)


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    app = request.app
    return get_redoc_html(
        openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
        redoc_js_url=f"{root}{_BUNDLE}", with_google_fonts=False,
        redoc_favicon_url=f"{root}/static-offline-docs/favicon.png",
    )


@router.get(_BUNDLE)
async def redoc_bundle() -> Response:
    return Response(_bundle(), media_type="text/javascript",
                    headers={"Cache-Control": "public, max-age=86400"})

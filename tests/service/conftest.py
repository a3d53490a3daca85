"""In-process apps on the demo model, driven through ``httpx.AsyncClient``."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.engine.images import shapes_image


def jpeg(index: int, size: tuple[int, int] = (480, 360)) -> bytes:
    ok, buf = cv2.imencode(".jpg", shapes_image(index, size), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


@asynccontextmanager
async def app_client(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(**{"model": Path("models/demo.onnx"), **overrides})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.yoloserve.loading  # the model loads in the background
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(cache_enabled=False) as c:
        yield c


@pytest.fixture(scope="session")
def images() -> list[bytes]:
    return [jpeg(i) for i in range(8)]

"""A tiny stand-in for the detection service, for the CLI's tests: real HTTP on loopback.

``/v1/detect`` answers a valid ``DetectionResult`` for anything Pillow can open (one box per image,
the whole image) and 400 ``invalid_image`` otherwise, echoing ``X-Request-ID``.
``/v1/streams/{id}/frames`` answers a ``StreamResult`` the same way (the box as track 1), and 409
``stale_frame`` for a ``seq`` not above the stream's last.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError

from harness.procs import wait_until
from wire.schemas import (
    Box2D,
    Detection,
    DetectionResult,
    ImageDimensions,
    NormalizedBox,
    ProcessingMetadata,
    StreamInfo,
    StreamResult,
    TrackedDetection,
)

__all__ = ["create_app", "serve"]


def _result(name: str, width: int, height: int, conf: float) -> DetectionResult:
    detection = Detection(
        class_name="square",
        class_id=1,
        confidence=0.9,
        box_2d=Box2D(x_min=0, y_min=0, x_max=width, y_max=height),
        normalized_box=NormalizedBox(x_center=0.5, y_center=0.5, width=1, height=1),
        box_area=float(width * height),
    )
    return DetectionResult(
        image_name=name,
        image_dimensions=ImageDimensions(width=width, height=height),
        detections=[detection],
        detection_count=1,
        processing_metadata=ProcessingMetadata(
            model_version="fake00000000",
            confidence_threshold=conf,
            iou_threshold=0.7,
            batch_size=1,
            timestamp=datetime.now(UTC),
        ),
    )


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/detect", response_model=None)
    async def detect(
        request: Request,
        image: Annotated[UploadFile, File()],
        conf: Annotated[float, Form()] = 0.25,
    ) -> DetectionResult | JSONResponse:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        data = await image.read()
        try:
            with Image.open(io.BytesIO(data)) as picture:
                picture.load()
                width, height = picture.size
        except (UnidentifiedImageError, OSError):
            body = {
                "error": {
                    "code": "invalid_image",
                    "message": "not an image",
                    "request_id": request_id,
                }
            }
            return JSONResponse(body, status_code=400, headers={"X-Request-ID": request_id})
        return _result(image.filename or "image", width, height, conf)

    last_seq: dict[str, int] = {}

    @app.post("/v1/streams/{stream_id}/frames", response_model=None)
    async def frame(
        stream_id: str,
        frame: Annotated[UploadFile, File()],
        seq: Annotated[int, Form()],
    ) -> StreamResult | JSONResponse:
        if seq <= last_seq.get(stream_id, -1):
            body = {"error": {"code": "stale_frame", "message": "stale", "request_id": None}}
            return JSONResponse(body, status_code=409)
        started = stream_id not in last_seq
        last_seq[stream_id] = seq
        with Image.open(io.BytesIO(await frame.read())) as picture:
            width, height = picture.size
        result = _result(frame.filename or "frame", width, height, 0.25)
        tracked = [
            TrackedDetection(**d.model_dump(), track_id=1) for d in result.detections
        ]
        return StreamResult(
            **result.model_dump(exclude={"detections"}),
            detections=tracked,
            stream=StreamInfo(id=stream_id, seq=seq, stream_started=started),
        )

    return app


@contextmanager
def serve() -> Iterator[str]:
    """Run the fake service on a free loopback port in a thread; yields its base URL."""
    config = uvicorn.Config(
        create_app(),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        loop="asyncio",
        http="h11",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-detect-service", daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("the fake service did not start")
        return bool(server.started)

    wait_until(started, 20, "the fake service to start", every=0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)

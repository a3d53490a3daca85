"""The naive baseline: ``/detect`` written the way a typical FastAPI + Ultralytics tutorial writes it.

One ``YOLO(model).predict(image)`` per request, called directly inside an ``async def`` route (so
the forward pass blocks the event loop and requests run strictly one at a time), no batcher, no
thread pool, Ultralytics defaults throughout (``predict`` picks the input size stored in the
weights, ``rect=True`` letterboxing, verbose logging). It answers ``POST /v1/detect`` with the same
multipart field ``image`` as the service, so the same load generator drives both.

    NAIVE_MODEL=models/demo.pt uvicorn bench.baselines.naive_app:app --port 8001

This file is deliberately *not* how to write a server; it is the yardstick.
"""

from __future__ import annotations

import io
import os
from typing import Annotated, Any

from fastapi import FastAPI, File, UploadFile
from PIL import Image
from ultralytics import YOLO  # type: ignore[attr-defined]

model = YOLO(os.environ.get("NAIVE_MODEL", "models/demo.pt"))
_device = os.environ.get("NAIVE_DEVICE")  # unset: Ultralytics chooses (a GPU when there is one)

app = FastAPI(title="naive YOLO detect")


@app.post("/v1/detect")
async def detect(image: Annotated[UploadFile, File()]) -> dict[str, Any]:
    contents = await image.read()
    img = Image.open(io.BytesIO(contents)).convert("RGB")
    results = model.predict(img, device=_device) if _device else model.predict(img)
    result: Any = results[0]  # type: ignore[index]
    detections = []
    for box in result.boxes:
        x1, y1, x2, y2 = (float(v) for v in box.xyxy[0].tolist())
        class_id = int(box.cls[0])
        detections.append({
            "class_name": result.names[class_id],
            "class_id": class_id,
            "confidence": float(box.conf[0]),
            "box_2d": {"x_min": x1, "y_min": y1, "x_max": x2, "y_max": y2},
        })
    return {"image_name": image.filename, "detections": detections,
            "detection_count": len(detections)}

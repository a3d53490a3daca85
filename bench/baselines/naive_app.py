"""The naive baseline: ``/detect`` written the way a typical FastAPI + Ultralytics tutorial writes it.

One ``YOLO(model).predict(image)`` per request, called directly inside an ``async def`` route (so
the forward pass blocks the event loop and requests run strictly one at a time), no batcher, no
thread pool, Ultralytics defaults throughout (``predict`` picks the input size stored in the
weights, ``rect=True`` letterboxing, verbose logging). It answers ``POST /v1/detect`` with the same
multipart field ``image`` as the service, so the same load generator drives both; for a segmenter,
a pose model or an oriented-box model it adds what the service adds (the masks' outlines,
keypoints, rotated boxes), and for a classifier ``POST /v1/classify`` gives the top 5.

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
    boxes = result.obb if result.obb is not None else result.boxes
    detections = []
    for i, box in enumerate(boxes if boxes is not None else []):
        x1, y1, x2, y2 = (float(v) for v in box.xyxy[0].tolist())
        class_id = int(box.cls[0])
        found: dict[str, Any] = {
            "class_name": result.names[class_id],
            "class_id": class_id,
            "confidence": float(box.conf[0]),
            "box_2d": {"x_min": x1, "y_min": y1, "x_max": x2, "y_max": y2},
        }
        if result.masks is not None:
            found["mask"] = {"polygons": [result.masks.xy[i].tolist()]}
        if result.keypoints is not None:
            found["keypoints"] = [{"x": x, "y": y, "confidence": c}
                                  for x, y, c in result.keypoints.data[i].tolist()]
        if result.obb is not None:
            found["rotated_box"] = dict(zip(("x_center", "y_center", "width", "height", "angle"),
                                            box.xywhr[0].tolist(), strict=True))
        detections.append(found)
    return {"image_name": image.filename, "detections": detections,
            "detection_count": len(detections)}


@app.post("/v1/classify")
async def classify(image: Annotated[UploadFile, File()]) -> dict[str, Any]:
    contents = await image.read()
    img = Image.open(io.BytesIO(contents)).convert("RGB")
    results = model.predict(img, device=_device) if _device else model.predict(img)
    probs: Any = results[0].probs  # type: ignore[index]
    top = [{"class_id": int(c), "class_name": results[0].names[int(c)], "confidence": float(p)}  # type: ignore[index]
           for c, p in zip(probs.top5, probs.top5conf.tolist(), strict=True)]
    return {"image_name": image.filename, "top": top}

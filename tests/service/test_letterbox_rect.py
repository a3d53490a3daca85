"""``--letterbox rect`` served: images of several shapes at once, each answered as alone (the
batcher's grouping by shape: tests/batching/test_batching_dispatch.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.engine import Engine
from tests.service.conftest import app_client, jpeg


async def test_mixed_shapes_are_batched_by_shape_and_answered_as_alone(demo_onnx: Path) -> None:
    sizes = [(640, 480), (480, 640), (640, 480), (500, 500)] * 3
    bodies = [jpeg(i, size) for i, size in enumerate(sizes)]
    engine = Engine.load(demo_onnx, device="cpu", rect=True)
    async with app_client(letterbox="rect", cache_enabled=False, max_batch_size=8) as client:
        info = (await client.get("/v1/model")).json()
        answers = await asyncio.gather(*(client.post("/v1/detect", files={"image": ("x.jpg", b)})
                                         for b in bodies))
        batcher = client.app.state.yoloserve.inferencer.batcher  # type: ignore[attr-defined]
        assert batcher.queue_depth == 0
    assert info["letterbox"] == "rect"
    for body, size, answer in zip(bodies, sizes, answers, strict=True):
        assert answer.status_code == 200
        got = answer.json()
        assert (got["image_dimensions"]["width"], got["image_dimensions"]["height"]) == size
        alone = engine.infer([engine.prepare(body)]).detections[0].items
        assert [d["class_id"] for d in got["detections"]] == [d.class_id for d in alone]
        for d, e in zip(got["detections"], alone, strict=True):
            assert abs(d["box_2d"]["x_min"] - e.x_min) < 0.01

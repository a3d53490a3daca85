"""Our engine against Ultralytics' own predictor: same weights, same image, same boxes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.engine import DetectParams, Engine
from tests.engine.images import SIZES, shapes_image

SETTINGS = [(0.25, 0.7), (0.1, 0.45)]


def _ultralytics(
    model: object, img: np.ndarray, conf: float, iou: float, imgsz: int
) -> list[tuple]:
    # Ultralytics ignores the input size in the metadata of a dynamic-axes ONNX model (it would
    # run it at 640), so the model's own input size is passed explicitly; for .pt it is the same.
    r = model.predict(  # type: ignore[attr-defined]
        img, conf=conf, iou=iou, rect=False, imgsz=imgsz, verbose=False
    )[0]
    boxes = r.boxes
    return sorted(
        zip(boxes.cls.int().tolist(), boxes.conf.tolist(), boxes.xyxy.tolist(), strict=True),
        key=lambda t: -t[1],
    )


def _ours(engine: Engine, img: np.ndarray, conf: float, iou: float) -> list[tuple]:
    out = engine.infer([engine.prepare_array(img)], [DetectParams(conf=conf, iou=iou)])
    dets = out.detections[0].items
    return [(d.class_id, d.confidence, [d.x_min, d.y_min, d.x_max, d.y_max]) for d in dets]


def assert_same(ours: list[tuple], theirs: list[tuple], where: str) -> None:
    assert [c for c, _, _ in ours] == [c for c, _, _ in theirs], where
    for (_, ca, ba), (_, cb, bb) in zip(ours, theirs, strict=True):
        assert abs(ca - cb) <= 1e-3, where
        assert np.abs(np.array(ba) - np.array(bb)).max() <= 1.0, where


def _cases() -> Iterator[tuple[int, tuple[int, int]]]:
    yield from enumerate(SIZES)


@pytest.fixture(scope="module", params=["torch", "onnx"])
def pair(request: pytest.FixtureRequest, demo_pt: Path, demo_onnx: Path) -> tuple[Engine, object]:
    from ultralytics import YOLO

    path = demo_pt if request.param == "torch" else demo_onnx
    engine = Engine.load(path, backend=request.param, device="cpu")
    return engine, YOLO(str(path), task="detect")


@pytest.mark.slow
@pytest.mark.parametrize(("conf", "iou"), SETTINGS)
def test_matches_ultralytics(pair: tuple[Engine, object], conf: float, iou: float) -> None:
    engine, model = pair
    total = 0
    for i, size in _cases():
        img = shapes_image(i, size)
        ours = _ours(engine, img, conf, iou)
        theirs = _ultralytics(model, img, conf, iou, engine.meta.input_size)
        assert_same(ours, theirs, f"{engine.meta.backend} image {i} size {size}")
        total += len(ours)
    assert total > len(SIZES)  # the comparison is not vacuous: the images have objects

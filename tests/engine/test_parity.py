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
    model: object, img: np.ndarray, conf: float, iou: float, imgsz: int, rect: bool = False
) -> list[tuple]:
    # Ultralytics ignores the input size in the metadata of a dynamic-axes ONNX model (it would
    # run it at 640), so the model's own input size is passed explicitly; for .pt it is the same.
    r = model.predict(  # type: ignore[attr-defined]
        img, conf=conf, iou=iou, rect=rect, imgsz=imgsz, verbose=False
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


@pytest.fixture(scope="module", params=["torch", "onnx", "openvino"])
def pair(request: pytest.FixtureRequest, demo_pt: Path, demo_onnx: Path) -> tuple[Engine, object]:
    """Our engine on a backend, and Ultralytics' predictor on the same file (OpenVINO: the ONNX
    file it reads, at FP32)."""
    from ultralytics import YOLO

    path = demo_pt if request.param == "torch" else demo_onnx
    engine = Engine.load(path, backend=request.param, device="cpu", precision="fp32")
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


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_rect_letterbox_matches_ultralytics_rect(backend: str, demo_pt: Path) -> None:
    """``--letterbox rect`` pads to the stride multiple only and answers as ``predict(rect=True)``
    (whose reference is the .pt: Ultralytics letterboxes rect for PyTorch models)."""
    from ultralytics import YOLO

    engine = Engine.load(demo_pt, backend=backend, device="cpu", rect=True)
    model = YOLO(str(demo_pt), task="detect")
    total = 0
    for i, size in list(_cases())[::3]:
        img = shapes_image(i, size)
        prepared = engine.prepare_array(img)
        assert prepared.tensor.shape[0] % 32 == 0 and prepared.tensor.shape[1] % 32 == 0
        ours = _ours(engine, img, 0.25, 0.7)
        theirs = _ultralytics(model, img, 0.25, 0.7, engine.meta.input_size, rect=True)
        assert_same(ours, theirs, f"{backend} rect image {i} size {size}")
        total += len(ours)
    assert total > 5


def test_rect_4_3_frame_is_a_quarter_fewer_pixels(demo_onnx: Path) -> None:
    engine = Engine.load(demo_onnx, device="cpu", rect=True)
    side = engine.meta.input_size
    canvas = engine.prepare_array(shapes_image(0, (640, 480))).tensor
    assert canvas.shape[:2] == (side * 3 // 4, side)


def test_a_batch_of_several_rect_shapes_answers_each_as_alone(demo_onnx: Path) -> None:
    engine = Engine.load(demo_onnx, backend="openvino", device="cpu", rect=True)
    imgs = [shapes_image(i, size) for i, size in enumerate([(640, 480), (480, 640), (640, 480),
                                                            (500, 500)])]
    together = engine.infer([engine.prepare_array(im) for im in imgs]).detections
    for img, det in zip(imgs, together, strict=True):
        alone = engine.infer([engine.prepare_array(img)]).detections[0]
        assert (det.width, det.height) == (alone.width, alone.height)
        assert [d.class_id for d in det.items] == [d.class_id for d in alone.items]
        for a, b in zip(det.items, alone.items, strict=True):
            assert abs(a.x_min - b.x_min) < 1e-3 and abs(a.confidence - b.confidence) < 1e-4

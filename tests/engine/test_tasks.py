"""Every Ultralytics task against Ultralytics' own predictor: the demo weights of each task, on
images their training never saw, at two settings of conf/iou, on torch, ONNX Runtime and OpenVINO
(FP32): boxes and keypoints within 1 px, confidences within 1e-3, masks the same pixels within a
1 px border, angles within 1e-3, the same top 5 in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from service.engine import DetectParams, Engine
from service.engine.tasks import rle_encode
from service.engine.types import Detections
from tests.engine.images import bundled_photo, shapes_image

MODELS = Path(__file__).resolve().parents[2] / "models"
STEMS = {"segment": "demo-seg", "pose": "demo-pose", "obb": "demo-obb", "classify": "demo-cls"}
SETTINGS = [(0.25, 0.7), (0.1, 0.45)]
SIZES = [(480, 360), (333, 500), (1000, 250), (64, 64)]


def _images() -> list[NDArray[np.uint8]]:
    photo = cv2.imread(str(bundled_photo("bus.jpg")))
    return [*(shapes_image(i, size) for i, size in enumerate(SIZES)), photo]


@pytest.fixture(scope="module", params=[(t, b) for t in STEMS for b in ("torch", "onnx", "openvino")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def pair(request: pytest.FixtureRequest) -> tuple[str, Engine, Any]:
    from ultralytics import YOLO

    task, backend = request.param
    stem = MODELS / STEMS[task]
    path = stem.with_suffix(".pt" if backend == "torch" else ".onnx")
    engine = Engine.load(path, backend=backend, device="cpu", precision="fp32")
    assert engine.meta.task == task
    return task, engine, YOLO(str(path), task=task)


def _raster(polygon: NDArray[np.float32], shape: tuple[int, int]) -> NDArray[np.uint8]:
    out = np.zeros(shape, np.uint8)
    if len(polygon) >= 3:
        cv2.fillPoly(out, [np.round(polygon).astype(np.int32)], 1)
    return out


def assert_same_pixels(ours: NDArray[np.float32], theirs: NDArray[np.float32],
                       shape: tuple[int, int], where: str) -> None:
    """The two outlines cover the same pixels but along a 1 px border of Ultralytics' mask."""
    a, b = _raster(ours, shape), _raster(theirs, shape)
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(b, kernel) - cv2.erode(b, kernel)
    assert not ((a ^ b) & (1 - border)).any(), where


def _compare(task: str, ours: Detections, r: Any, where: str) -> None:
    if task == "classify":
        assert ours.probs is not None
        top5 = np.argsort(-ours.probs, kind="stable")[:5].tolist()
        assert top5 == list(r.probs.top5), where
        assert np.abs(ours.probs[top5] - r.probs.top5conf.numpy()).max() <= 1e-3, where
        return
    ref = r.obb if task == "obb" else r.boxes
    assert ours.class_ids.tolist() == ref.cls.int().tolist(), where
    assert np.abs(ours.scores - ref.conf.numpy()).max(initial=0) <= 1e-3, where
    assert np.abs(ours.boxes - ref.xyxy.numpy()).max(initial=0) <= 1.0, where
    if task == "pose":
        assert ours.keypoints is not None
        got, want = ours.keypoints, r.keypoints.data.numpy()
        assert np.abs(got[..., :2] - want[..., :2]).max(initial=0) <= 1.0, where
        assert np.abs(got[..., 2] - want[..., 2]).max(initial=0) <= 1e-3, where
    if task == "obb":
        assert ours.rotated is not None and ours.corners is not None
        want = r.obb.xywhr.numpy()
        assert np.abs(ours.rotated[:, :4] - want[:, :4]).max(initial=0) <= 1.0, where
        assert np.abs(ours.rotated[:, 4] - want[:, 4]).max(initial=0) <= 1e-3, where
        assert np.abs(ours.corners - r.obb.xyxyxyxy.numpy()).max(initial=0) <= 1.0, where
    if task == "segment":
        theirs = [] if r.masks is None else r.masks.xy  # None when nothing was found
        assert ours.outlines is not None and len(ours.outlines) == len(theirs), where
        shape = (ours.height, ours.width)
        for i, (a, b) in enumerate(zip(ours.outlines, theirs, strict=True)):
            assert_same_pixels(a, b, shape, f"{where} mask {i}")


@pytest.mark.slow
@pytest.mark.parametrize(("conf", "iou"), SETTINGS)
def test_each_task_equals_ultralytics_predict(pair: tuple[str, Engine, Any], conf: float,
                                              iou: float) -> None:
    task, engine, model = pair
    found = 0
    for k, img in enumerate(_images()):
        ours = engine.infer([engine.prepare_array(img)], [DetectParams(conf=conf, iou=iou)])
        r = model.predict(img, conf=conf, iou=iou, rect=False, imgsz=engine.meta.input_size,
                          verbose=False, device="cpu")[0]
        _compare(task, ours.detections[0], r, f"{task} {engine.meta.backend} image {k}")
        found += len(ours.detections[0]) if task != "classify" else 1
    assert found > 0  # the comparison saw answers, not only empty lists


def test_a_batch_of_images_gives_what_each_gives_alone(pair: tuple[str, Engine, Any]) -> None:
    task, engine, _ = pair
    images = _images()
    params = [DetectParams(conf=c, iou=i) for c, i in (SETTINGS * 3)[:len(images)]]
    batched = engine.infer([engine.prepare_array(img) for img in images], params).detections
    for img, p, together in zip(images, params, batched, strict=True):
        alone = engine.infer([engine.prepare_array(img)], [p]).detections[0]
        _compare_detections(task, together, alone)


def _compare_detections(task: str, a: Detections, b: Detections) -> None:
    if task == "classify":
        assert a.probs is not None and b.probs is not None
        assert np.abs(a.probs - b.probs).max() <= 1e-4
        return
    assert a.class_ids.tolist() == b.class_ids.tolist()
    assert np.abs(a.boxes - b.boxes).max(initial=0) <= 1e-2


def test_rle_is_cocos_encoding() -> None:
    """Known answers of pycocotools' ``mask.encode`` (column-major runs, 5-bit groups)."""
    mask = np.zeros((4, 3), np.uint8)
    mask[1:3, 1] = 1
    assert rle_encode(mask) == {"size": [4, 3], "counts": "525"}
    assert rle_encode(np.ones((2, 2), np.uint8)) == {"size": [2, 2], "counts": "04"}
    assert rle_encode(np.zeros((2, 2), np.uint8)) == {"size": [2, 2], "counts": "4"}
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:25] = 1
    mask[7, 3] = 1
    assert rle_encode(mask)["counts"] == "S21Y49QL000000000000000000000000000o2"

"""The engine on a CUDA device: FP32 equal to Ultralytics' predictor on the same GPU, FP16 and
BF16 finding what FP32 finds, and a batch answering each image as alone. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.engine import Engine
from tests.engine.images import SIZES, bundled_photo, shapes_image
from tests.engine.test_parity import _ours, _ultralytics, assert_same

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _images() -> list[np.ndarray]:
    import cv2

    photos = [cv2.imread(str(bundled_photo(n))) for n in ("bus.jpg", "zidane.jpg")]
    return photos + [shapes_image(i, SIZES[i % len(SIZES)]) for i in range(10)]


def agreement(reduced: list[tuple], full: list[tuple], conf: float,
              margin: float = 0.05) -> tuple[int, int]:
    """(found, clear): of the detections clear of the threshold by ``margin`` in either answer,
    how many the other answer has too (same class, IoU ≥ 0.9, confidence within ``margin``).
    Reduced precision may move a box that sits near the threshold across it, or let NMS keep the
    other of two close boxes; the share found says how often."""
    found = clear = 0
    for mine, theirs in ((reduced, full), (full, reduced)):
        for cls, c, box in mine:
            if c < conf + margin:
                continue
            clear += 1
            found += any(t[0] == cls and _iou(box, t[2]) >= 0.9 and abs(t[1] - c) <= margin
                         for t in theirs)
    return found, clear


@pytest.fixture(scope="module")
def fp32(demo_pt: Path) -> Engine:
    return Engine.load(demo_pt, backend="torch", device="cuda", precision="fp32")


def test_fp32_on_cuda_matches_ultralytics_on_cuda(fp32: Engine, demo_pt: Path) -> None:
    from ultralytics import YOLO

    model = YOLO(str(demo_pt), task="detect")
    model.to("cuda")
    total = 0
    for i, img in enumerate(_images()):
        ours = _ours(fp32, img, 0.25, 0.7)
        theirs = _ultralytics(model, img, 0.25, 0.7, fp32.meta.input_size)
        assert_same(ours, theirs, f"image {i}")
        total += len(ours)
    assert total > 10


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda_finds_what_fp32_finds(fp32: Engine, demo_pt: Path,
                                                         precision: str) -> None:
    if precision == "bf16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 needs compute capability 8.0")
    engine = Engine.load(demo_pt, backend="torch", device="cuda", precision=precision)
    assert engine.meta.precision == precision
    found = clear = 0
    for img in _images():
        f, c = agreement(_ours(engine, img, 0.25, 0.7), _ours(fp32, img, 0.25, 0.7), 0.25)
        found, clear = found + f, clear + c
    assert clear > 20
    assert found / clear >= (0.97 if precision == "fp16" else 0.9), (found, clear)


def test_fp16_batch_of_16_answers_each_image_as_alone(demo_pt: Path) -> None:
    engine = Engine.load(demo_pt, backend="torch", device="cuda", precision="fp16")
    imgs = _images()
    prepared = [engine.prepare_array(imgs[i % len(imgs)]) for i in range(16)]
    batched = engine.infer(prepared).detections
    found = clear = 0
    for i, p in enumerate(prepared):
        alone = engine.infer([p]).detections[0]
        rows = [[(d.class_id, d.confidence, [d.x_min, d.y_min, d.x_max, d.y_max]) for d in x.items]
                for x in (batched[i], alone)]
        f, c = agreement(rows[0], rows[1], 0.25, margin=0.02)
        found, clear = found + f, clear + c
    assert clear > 20 and found / clear >= 0.97, (found, clear)

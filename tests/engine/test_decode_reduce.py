"""``--decode-reduce``: large JPEGs decoded at a reduced DCT scale, boxes still in full-size pixels."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from service.engine import Engine
from service.engine.decode import decode_image, decode_reduced
from service.engine.evaluation import agreement
from tests.engine.images import shapes_image


def _jpeg(img: np.ndarray, orientation: int | None = None) -> bytes:
    pil = Image.fromarray(img[:, :, ::-1])
    out = io.BytesIO()
    if orientation is None:
        pil.save(out, format="JPEG", quality=92)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        pil.save(out, format="JPEG", quality=92, exif=exif)
    return out.getvalue()


@pytest.mark.parametrize(("size", "factor"), [((2048, 1536), 8), ((1024, 700), 4), ((600, 400), 2),
                                              ((500, 400), 1)])
def test_the_scale_keeps_the_long_side_at_least_the_input_size(size: tuple[int, int],
                                                               factor: int) -> None:
    img, full = decode_reduced(_jpeg(shapes_image(0, size)), 256)
    assert full == size
    assert img.shape[1] == -(-size[0] // factor) and img.shape[0] == -(-size[1] // factor)


def test_png_and_exif_rotation() -> None:
    png = cv2.imencode(".png", shapes_image(1, (1200, 900)))[1].tobytes()
    img, full = decode_reduced(png, 256)
    assert img.shape[:2] == (900, 1200) and full == (1200, 900)
    rotated = _jpeg(shapes_image(1, (1200, 800)), orientation=6)  # shown turned 90°: 800 x 1200
    img, full = decode_reduced(rotated, 256)
    assert full == decode_image(rotated).shape[1::-1] == (800, 1200)
    assert img.shape[0] > img.shape[1]


def test_boxes_agree_with_full_decoding(demo_onnx: Path) -> None:
    full = Engine.load(demo_onnx, device="cpu")
    reduced = Engine.load(demo_onnx, device="cpu", decode_reduce=True)
    images = [_jpeg(shapes_image(i, (1600, 1200), seed=1)) for i in range(12)]
    a = full.infer([full.prepare(d) for d in images]).detections
    b = reduced.infer([reduced.prepare(d) for d in images]).detections
    assert all((x.width, x.height) == (1600, 1200) for x in b)
    matched, total = agreement(a, b, conf=0.25, iou=0.85)
    assert total > 10 and matched / total >= 0.9

"""``yoloserve serve --device cuda --precision fp16`` as a real process: it reports the GPU and the
precision, and a burst of concurrent requests, batched on the GPU, answers what the engine finds at
FP32. Skipped without a GPU."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from harness.procs import Service
from service.engine import Engine
from tests.engine.images import bundled_photo, shapes_image
from tests.engine.test_cuda import agreement
from tests.engine.test_parity import _ours

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _rows(body: dict) -> list[tuple]:
    return [(d["class_id"], d["confidence"], [d["box_2d"][k] for k in ("x_min", "y_min", "x_max", "y_max")])
            for d in body["detections"]]


def test_fp16_service_on_cuda_answers_a_burst_as_fp32_would(demo_pt: Path) -> None:
    imgs = [cv2.imread(str(bundled_photo("bus.jpg")))] + [shapes_image(i, (640, 480)) for i in range(7)]
    jpegs = [cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes() for im in imgs]
    reference = Engine.load(demo_pt, backend="torch", device="cuda", precision="fp32")
    expected = [_ours(reference, cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR), 0.25, 0.7)
                for j in jpegs]
    with Service("cuda", "--model", str(demo_pt), "--backend", "torch", "--device", "cuda",
                 "--precision", "fp16", "--max-batch-size", "16") as svc:
        model = httpx.get(svc.url + "/v1/model", timeout=10).json()
        assert model["device"].startswith("cuda") and model["precision"] == "fp16"

        def detect(i: int) -> dict:
            r = httpx.post(svc.url + "/v1/detect", files={"image": ("x.jpg", jpegs[i % 8])},
                           timeout=30)
            assert r.status_code == 200, r.text
            return dict(r.json())

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(detect, range(64)))
    found = clear = 0
    for i, body in enumerate(answers):
        f, c = agreement(_rows(body), expected[i % 8], 0.25)
        found, clear = found + f, clear + c
    assert clear > 64 and found / clear >= 0.97, (found, clear)

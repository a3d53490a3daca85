"""One service with a model of every task: each answers on its own routes in its own shape, the
wrong route is 400 ``wrong_task``, ``/v2`` agrees with ``/v1``, the client parses every shape, and
images of mixed tasks in flight at once get what each gets alone."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from clients import AsyncDetectionClient, InvalidRequest
from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess

MODELS = Path(__file__).resolve().parents[2] / "models"
TASKS = {"det": ("demo.onnx", "detect"), "seg": ("demo-seg.onnx", "segment"),
         "pose": ("demo-pose.pt", "pose"), "obb": ("demo-obb.onnx", "obb"),
         "cls": ("demo-cls.onnx", "classify")}
DETECTORS = ["det", "seg", "pose", "obb"]


@pytest.fixture(scope="module")
def served() -> Iterator[ServiceProcess]:
    args = [flag for name, (file, _) in TASKS.items()
            for flag in ("--model", f"{name}={MODELS / file}")]
    with ServiceProcess(*args, "--max-batch-size", "4",
                        env={"YOLOSERVE_ACCESS_LOG": "false", "YOLOSERVE_CACHE_ENABLED": "false"}
                        ) as proc:
        yield proc


def _post(url: str, route: str, image: bytes, **params: object) -> httpx.Response:
    return httpx.post(url + route, files={"image": ("x.jpg", image)}, params=params, timeout=60)


def test_each_model_says_its_task(served: ServiceProcess) -> None:
    models = httpx.get(served.url + "/v1/models").json()["models"]
    assert {m["name"]: m["task"] for m in models} == {n: t for n, (_, t) in TASKS.items()}


def test_each_task_answers_in_its_own_shape(served: ServiceProcess) -> None:
    image = jpeg(5)
    fields = {"seg": "mask", "pose": "keypoints", "obb": "rotated_box"}
    for name in DETECTORS:
        answer = _post(served.url, f"/v1/models/{name}/detect", image, conf=0.1)
        assert answer.status_code == 200, answer.text
        dets = answer.json()["detections"]
        assert dets, name
        for other in ("mask", "keypoints", "rotated_box", "polygon"):
            present = [other in d for d in dets]
            expected = other == fields.get(name) or (other == "polygon" and name == "obb")
            assert present == [expected] * len(dets), (name, other)
    seg = _post(served.url, "/v1/models/seg/detect", image, conf=0.1).json()["detections"][0]
    assert len(seg["mask"]["polygons"][0]) >= 3
    rle = _post(served.url, "/v1/models/seg/detect", image, conf=0.1, mask_format="rle").json()
    assert rle["detections"][0]["mask"]["size"] == [rle["image_dimensions"]["height"],
                                                    rle["image_dimensions"]["width"]]
    none = _post(served.url, "/v1/models/seg/detect", image, conf=0.1, mask_format="none").json()
    assert all("mask" not in d for d in none["detections"])
    pose = _post(served.url, "/v1/models/pose/detect", image, conf=0.1).json()["detections"][0]
    assert len(pose["keypoints"]) == 4  # the demo's: top, right, bottom, left
    obb = _post(served.url, "/v1/models/obb/detect", image, conf=0.1).json()["detections"][0]
    corners = np.array(obb["polygon"])
    box = obb["box_2d"]
    assert corners.shape == (4, 2)
    assert np.allclose(corners.min(0), [box["x_min"], box["y_min"]], atol=0.01)
    top = _post(served.url, "/v1/models/cls/classify", image).json()["top"]
    assert len(top) == 5 and top == sorted(top, key=lambda t: -t["confidence"])


def test_the_wrong_route_is_wrong_task(served: ServiceProcess) -> None:
    image = jpeg(1)
    for route in ("/v1/models/cls/detect", "/v1/models/cls/annotate", "/v1/models/det/classify",
                  "/v1/models/seg/classify"):
        answer = _post(served.url, route, image)
        assert (answer.status_code, answer.json()["error"]["code"]) == (400, "wrong_task"), route


def test_annotate_draws_every_detection_task(served: ServiceProcess) -> None:
    image = jpeg(2)
    plain = _post(served.url, "/v1/models/det/annotate", image, conf=0.1).content
    for name in ("seg", "pose", "obb"):
        drawn = _post(served.url, f"/v1/models/{name}/annotate", image, conf=0.1)
        assert drawn.status_code == 200 and drawn.content[:2] == b"\xff\xd8"
        assert drawn.content != plain


def test_v2_agrees_with_v1_for_every_task(served: ServiceProcess) -> None:
    image = jpeg(4)
    data = base64.b64encode(image).decode()
    for name in (*DETECTORS, "cls"):
        body = {"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [data]}],
                "parameters": {"conf": 0.1, "max_det": 50}}
        v2 = httpx.post(f"{served.url}/v2/models/{name}/infer", json=body, timeout=60).json()
        out = {o["name"]: o for o in v2["outputs"]}
        if name == "cls":
            v1 = _post(served.url, "/v1/models/cls/classify", image).json()["top"]
            probs = np.array(out["probabilities"]["data"])
            assert np.argsort(-probs)[:5].tolist() == [t["class_id"] for t in v1]
            continue
        v1 = _post(served.url, f"/v1/models/{name}/detect", image, conf=0.1, max_det=50).json()
        n = out["num_detections"]["data"][0]
        assert n == v1["detection_count"] > 0
        boxes = np.array(out["boxes"]["data"]).reshape(50, 4)[:n]
        want = np.array([[d["box_2d"][k] for k in ("x_min", "y_min", "x_max", "y_max")]
                         for d in v1["detections"]])
        assert np.abs(boxes - want).max() <= 0.01
        if name == "pose":
            kpts = np.array(out["keypoints"]["data"]).reshape(50, 4, 3)[:n]
            assert np.abs(kpts[0, :, :2] - [[k["x"], k["y"]] for k in v1["detections"][0]["keypoints"]]
                          ).max() <= 0.01
        if name == "obb":
            rot = np.array(out["rotated_boxes"]["data"]).reshape(50, 5)[:n]
            assert abs(rot[0, 4] - v1["detections"][0]["rotated_box"]["angle"]) <= 1e-5
        if name == "seg":
            rle = orjson.loads(out["masks"]["data"][0])
            assert rle["size"] == [v1["image_dimensions"]["height"], v1["image_dimensions"]["width"]]


async def test_mixed_tasks_in_flight_at_once_answer_as_alone(served: ServiceProcess) -> None:
    images = [jpeg(10 + i) for i in range(8)]
    names = ["det", "seg", "pose", "obb", "cls", "seg", "pose", "obb"]
    async with AsyncDetectionClient(served.url) as client:
        async def one(name: str, image: bytes) -> tuple[list[object], list[list[float]]]:
            """What was found (classes, and which task's parts), and the boxes."""
            if name == "cls":
                return [t.class_id for t in (await client.classify(image, model=name)).top], []
            dets = (await client.detect(image, model=name, conf=0.1)).detections
            found: list[object] = [(d.class_id, d.mask is not None, d.keypoints is not None,
                                    d.rotated_box is not None) for d in dets]
            return found, [[d.box_2d.x_min, d.box_2d.y_max] for d in dets]

        together = await asyncio.gather(*(one(n, i) for n, i in zip(names, images, strict=True)))
        alone = [await one(n, i) for n, i in zip(names, images, strict=True)]
        for (found_a, boxes_a), (found_b, boxes_b) in zip(together, alone, strict=True):
            assert found_a == found_b
            assert np.abs(np.array(boxes_a) - np.array(boxes_b)).max(initial=0) <= 0.05
        with pytest.raises(InvalidRequest) as wrong:
            await client.detect(images[0], model="cls")
        assert wrong.value.code == "wrong_task"

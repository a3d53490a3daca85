"""The OpenVINO backend: FP32 as ONNX Runtime, bf16 and the shipped INT8 model close to it, the raw
network for /v2, passes from several threads at once, and the INT8 export itself."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from service.engine import DetectParams, Engine, ModelLoadError
from service.engine.evaluation import agreement
from service.engine.openvino_export import export_openvino, head_ignored_scope, images_in
from service.engine.precision import detect_hardware, missing_for
from tests.engine.images import shapes_image

HELD_OUT = [shapes_image(i, (480 + 16 * (i % 5), 360), seed=1) for i in range(32)]


def _detect(engine: Engine, images: list[np.ndarray]) -> list:
    out = []
    for i in range(0, len(images), 8):
        out.extend(engine.infer([engine.prepare_array(im) for im in images[i:i + 8]]).detections)
    return out


def _can(precision: str) -> bool:
    return missing_for(precision, detect_hardware("cpu"), "cpu", "openvino") is None  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fp32_answers(demo_onnx: Path) -> list:
    return _detect(Engine.load(demo_onnx, backend="onnx", device="cpu"), HELD_OUT)


def test_fp32_equals_onnx_runtime_box_for_box(demo_pt: Path, fp32_answers: list) -> None:
    engine = Engine.load(demo_pt, backend="openvino", device="cpu", precision="fp32")
    assert (engine.meta.backend, engine.meta.precision) == ("openvino", "fp32")
    ours = _detect(engine, HELD_OUT)
    for a, b in zip(fp32_answers, ours, strict=True):
        assert [d.class_id for d in a.items] == [d.class_id for d in b.items]
        for x, y in zip(a.items, b.items, strict=True):
            assert abs(x.x_min - y.x_min) < 0.05 and abs(x.y_max - y.y_max) < 0.05
            assert abs(x.confidence - y.confidence) < 1e-3


@pytest.mark.skipif(not _can("bf16"), reason="this CPU has no bf16 units")
def test_bf16_keeps_98_percent_of_fp32_boxes(demo_pt: Path, fp32_answers: list) -> None:
    engine = Engine.load(demo_pt, backend="openvino", device="cpu", precision="bf16")
    matched, total = agreement(fp32_answers, _detect(engine, HELD_OUT), conf=0.25, iou=0.9)
    assert total > 50 and matched / total >= 0.98


@pytest.mark.skipif(not _can("int8"), reason="this CPU has no int8 (VNNI) units")
def test_the_shipped_int8_model_is_found_and_close_to_fp32(demo_pt: Path,
                                                           fp32_answers: list) -> None:
    engine = Engine.load(demo_pt, device="cpu", precision="int8")  # auto: OpenVINO, the int8 IR
    assert engine.meta.backend == "openvino" and engine.meta.path is not None
    assert engine.meta.path.parent.name == "demo_int8_openvino_model"
    matched, total = agreement(fp32_answers, _detect(engine, HELD_OUT), conf=0.25, iou=0.9)
    assert matched / total >= 0.9


def test_an_int8_model_is_not_served_as_fp32_and_vice_versa(demo_pt: Path, demo_onnx: Path,
                                                           tmp_path: Path) -> None:
    import shutil

    ir = demo_pt.parent / "demo_int8_openvino_model" / "demo.xml"
    with pytest.raises(ModelLoadError, match="int8"):
        Engine.load(ir, backend="openvino", device="cpu", precision="fp32")
    alone = tmp_path / "demo.onnx"  # no quantized model beside it
    shutil.copyfile(demo_onnx, alone)
    with pytest.raises(ModelLoadError, match="yoloserve export"):
        Engine.load(alone, backend="openvino", device="cpu", precision="int8")


def test_raw_network_and_threads(demo_onnx: Path) -> None:
    """``forward_raw`` is the plain network; two threads at once get what one thread gets."""
    ov = Engine.load(demo_onnx, backend="openvino", device="cpu", streams=2, threads=1)
    ort = Engine.load(demo_onnx, backend="onnx", device="cpu")
    x = np.random.default_rng(0).random((2, 3, 256, 256), dtype=np.float32)
    np.testing.assert_allclose(ov.backend.forward_raw(x), ort.backend.forward_raw(x), atol=2e-3)
    batch = [ov.prepare_array(im) for im in HELD_OUT[:4]]
    alone = ov.infer(batch).detections
    results: list[list] = []

    def work() -> None:
        for _ in range(3):
            results.append(ov.infer(batch).detections)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    for r in results:
        assert [[d.class_id for d in x.items] for x in r] == [[d.class_id for d in x.items]
                                                                for x in alone]


@pytest.mark.slow
@pytest.mark.skipif(not _can("int8"), reason="this CPU has no int8 (VNNI) units")
def test_int8_export_keeps_the_head_in_higher_precision(demo_pt: Path, tmp_path: Path,
                                                        fp32_answers: list) -> None:
    import openvino as ov

    calib = tmp_path / "calib"
    calib.mkdir()
    import cv2

    for i in range(24):
        cv2.imwrite(str(calib / f"{i}.jpg"), shapes_image(i, (400, 300), seed=0))
    ignored = head_ignored_scope(ov.Core().read_model(str(demo_pt.with_suffix(".onnx"))))
    assert any("dfl" in n for n in ignored) and any("Sigmoid" in n for n in ignored)
    head = [n for n in ignored if n.startswith("/model.22/")]
    branches = [n for n in head if n.startswith(("/model.22/cv2", "/model.22/cv3"))]
    assert head and all(n.endswith("Sigmoid") for n in branches)  # the head's convs are int8
    xml = export_openvino(demo_pt, precision="int8", out=tmp_path / "ir",
                          calibration=images_in(calib, 24))
    assert (xml.parent / "metadata.yaml").is_file()
    engine = Engine.load(xml, backend="openvino", device="cpu", precision="int8")
    assert engine.meta.classes == {0: "circle", 1: "square", 2: "triangle", 3: "star", 4: "hexagon"}
    out = _detect(engine, HELD_OUT)
    matched, total = agreement(fp32_answers, out, conf=0.25, iou=0.9)
    assert matched / total >= 0.85
    dets = engine.infer([engine.prepare_array(HELD_OUT[0])], [DetectParams(conf=0.5)]).detections
    assert all(d.confidence > 0.5 for d in dets[0].items)

"""One forward pass for many images gives each the answer it would get alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.engine import DetectParams, Engine
from tests.engine.images import SIZES, shapes_image
from tests.engine.test_parity import assert_same


def _rows(dets: object) -> list[tuple]:
    return [(d.class_id, d.confidence, [d.x_min, d.y_min, d.x_max, d.y_max])
            for d in dets.items]  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=["torch", "onnx"])
def engine(request: pytest.FixtureRequest, demo_pt: Path, demo_onnx: Path) -> Engine:
    path = demo_pt if request.param == "torch" else demo_onnx
    return Engine.load(path, backend=request.param, device="cpu")


def test_batch_of_8_equals_one_at_a_time(engine: Engine) -> None:
    prepared = [engine.prepare_array(shapes_image(i, SIZES[i * 5])) for i in range(8)]
    batched = engine.infer(prepared).detections
    assert sum(len(d.items) for d in batched) > 8
    for i, p in enumerate(prepared):
        alone = engine.infer([p]).detections[0]
        assert_same(_rows(batched[i]), _rows(alone), f"image {i}")


def test_mixed_parameters_in_one_batch(engine: Engine) -> None:
    prepared = [engine.prepare_array(shapes_image(i, (640, 480))) for i in range(6)]
    params = [
        DetectParams(conf=0.25), DetectParams(conf=0.6), DetectParams(conf=0.05, iou=0.3),
        DetectParams(max_det=1), DetectParams(classes=frozenset({0, 2})),
        DetectParams(conf=0.1, agnostic=True),
    ]
    batched = engine.infer(prepared, params).detections
    for i, (p, q) in enumerate(zip(prepared, params, strict=True)):
        alone = engine.infer([p], [q]).detections[0]
        assert_same(_rows(batched[i]), _rows(alone), f"image {i} {q}")
    assert len(batched[3].items) <= 1
    assert all(d.class_id in {0, 2} for d in batched[4].items)


def test_empty_batch(engine: Engine) -> None:
    assert engine.infer([]).detections == []


def test_onnx_on_cpu_stops_spinning_when_a_run_ends(demo_onnx: Path) -> None:
    """ONNX Runtime threads must stop spinning when a run ends, so that the event loop gets the CPU."""
    from service.engine.backends.onnx_backend import OnnxBackend

    backend = OnnxBackend(demo_onnx, "cpu", threads=2)
    options = backend._session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(RuntimeError):  # not set: ONNX Runtime's default, spinning allowed
        options.get_session_config_entry("session.intra_op.allow_spinning")
    quiet = OnnxBackend(demo_onnx, "cpu", threads=2, spin=False)._session.get_session_options()
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"

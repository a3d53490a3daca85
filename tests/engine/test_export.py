"""``yoloserve export``: ONNX with a dynamic batch axis, FP16 and INT8 copies, parity and mAP."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from service.engine.precision import detect_hardware, missing_for
from yoloserve.cli import main

pytestmark = pytest.mark.slow


def test_export_cli_writes_checked_models(demo_pt: Path, tmp_path: Path) -> None:
    weights = tmp_path / "m.pt"
    shutil.copyfile(demo_pt, weights)
    out = tmp_path / "out" / "m.onnx"
    result = CliRunner().invoke(
        main, ["export", "--model", str(weights), "--out", str(out), "--half", "--int8",
               "--check-images", "12"],
    )
    assert result.exit_code == 0, result.output
    for path in (out, out.with_suffix(".fp16.onnx"), out.with_suffix(".int8.onnx")):
        assert path.is_file()
        model = onnx.load(str(path))
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param, "the batch axis must be dynamic"
        assert model.opset_import[0].version >= 17
        meta = {p.key: p.value for p in model.metadata_props}
        assert "names" in meta and "imgsz" in meta
    lines = [line for line in result.output.splitlines() if line.startswith("| m.")]
    assert len(lines) == 4  # source, fp32, fp16, int8
    fp32 = next(line for line in lines if "| fp32 |" in line)
    assert "100.0%" in fp32  # every image gets the same boxes as the source weights
    assert fp32.count("|") == 9 and "| - |" not in fp32  # mAP measured on the demo split


@pytest.mark.skipif(
    missing_for("int8", detect_hardware("cpu"), "cpu", "openvino") is not None,
    reason="this CPU has no int8 (VNNI) units")
def test_openvino_int8_export_cli_writes_an_ir_the_service_finds(demo_pt: Path,
                                                                 tmp_path: Path) -> None:
    """``export --format openvino --precision int8``: the IR lands where ``--precision int8``
    looks for it, and the command says how closely it follows FP32."""
    import cv2

    from service.engine import Engine
    from tests.engine.images import shapes_image

    for name in ("m.pt", "m.onnx"):
        shutil.copyfile(demo_pt.with_suffix(Path(name).suffix), tmp_path / name)
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(16):
        cv2.imwrite(str(calib / f"{i}.jpg"), shapes_image(i, (320, 240), seed=0))
    result = CliRunner().invoke(
        main, ["export", "--model", str(tmp_path / "m.pt"), "--format", "openvino",
               "--precision", "int8", "--calibration", str(calib), "--check-images", "16"])
    assert result.exit_code == 0, result.output
    xml = tmp_path / "m_int8_openvino_model" / "m.xml"
    assert xml.is_file() and f"wrote {xml}" in result.output
    assert "boxes agree" in result.output and "yoloserve evaluate" in result.output
    engine = Engine.load(tmp_path / "m.pt", device="cpu", precision="int8")
    assert (engine.meta.backend, engine.meta.precision, engine.meta.path) == ("openvino", "int8", xml)


@pytest.mark.parametrize("stem", ["demo-seg", "demo-pose", "demo-obb", "demo-cls"])
def test_every_task_exports_to_onnx_openvino_and_triton(stem: str, tmp_path: Path) -> None:
    """Each task's weights through each export format: the ONNX copy follows the weights image
    by image (the classifier: the same top 5), the IR and the Triton entry keep the task."""
    import yaml

    models = Path(__file__).resolve().parents[2] / "models"
    weights = tmp_path / f"{stem}.pt"
    shutil.copyfile(models / f"{stem}.pt", weights)
    onnx_out = tmp_path / "onnx" / f"{stem}.onnx"
    checked = CliRunner().invoke(main, ["export", "--model", str(weights), "--out", str(onnx_out),
                                        "--check-images", "6"])
    assert checked.exit_code == 0, checked.output
    fp32 = next(line for line in checked.output.splitlines() if "| fp32 |" in line)
    assert "100.0%" in fp32, checked.output
    ir = CliRunner().invoke(main, ["export", "--model", str(weights), "--format", "openvino",
                                   "--out", str(tmp_path / "ir"), "--check-images", "4"])
    assert ir.exit_code == 0, ir.output
    meta = yaml.safe_load((tmp_path / "ir" / "metadata.yaml").read_text())
    assert meta["task"] == stem.replace("demo-", "").replace("seg", "segment").replace(
        "cls", "classify")
    triton = CliRunner().invoke(main, ["export", "--model", str(weights), "--format", "triton",
                                       "--out", str(tmp_path / "triton")])
    assert triton.exit_code == 0, triton.output
    assert f"'task': '{meta['task']}'" in (tmp_path / "triton" / stem / "config.pbtxt").read_text()

"""``yoloserve export``: ONNX with a dynamic batch axis, FP16 and INT8 copies, parity and mAP."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

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

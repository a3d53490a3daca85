"""``yoloserve export --format onnx``: each exported file checked against its source weights.

Parity is measured with our own engine: the source weights on the torch backend against each
exported file on the onnx backend, over generated images, box by box. For the demo model, mAP on
its held-out split is measured too (Ultralytics' validator on each file).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from service.demo.synthetic import CLASSES, make_sample, write_split
from service.engine.engine import Engine
from service.engine.export import (
    ExportReport,
    ExportRow,
    compare,
    detect_all,
    export_onnx,
    to_fp16,
    to_int8,
)

__all__ = ["export_and_check"]


def _demo_map(model: Path, data: Path, imgsz: int) -> tuple[float, float]:
    from ultralytics import YOLO  # type: ignore[attr-defined]

    with tempfile.TemporaryDirectory() as tmp:
        m = YOLO(str(model), task="detect").val(
            data=str(data), imgsz=imgsz, batch=8, device="cpu", plots=False, verbose=False,
            project=tmp, name="val")
    return float(m.box.map50), float(m.box.map)


def export_and_check(model: Path, *, out: Path | None = None, half: bool = False,
                     int8: bool = False, check_images: int = 100) -> ExportReport:
    out = out or model.with_suffix(".onnx")
    targets = [(export_onnx(model, out), "fp32")]
    if half:
        targets.append((to_fp16(out, out.with_suffix(".fp16.onnx")), "fp16"))
    if int8:
        targets.append((to_int8(out, out.with_suffix(".int8.onnx")), "int8"))
    source = Engine.load(model, backend="torch", device="cpu")
    images = [make_sample(1, i).image for i in range(check_images)]
    reference = detect_all(source, images)
    report = ExportReport(source=model)
    # mAP on the demo's held-out boxes: the demo detector's (other tasks are checked box by box)
    is_demo = tuple(source.meta.classes.values()) == CLASSES and source.meta.task == "detect"
    with tempfile.TemporaryDirectory() as tmp:
        data = None
        if is_demo:
            write_split(Path(tmp), "val", 1, check_images)
            names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
            data = Path(tmp) / "data.yaml"
            data.write_text(f"path: {tmp}\ntrain: images/val\nval: images/val\nnames:\n{names}\n")
            report.source_map = _demo_map(model, data, source.meta.input_size)
        for path, precision in targets:
            engine = Engine.load(path, backend="onnx", device="cpu")
            row = compare(reference, detect_all(engine, images), ExportRow(path, precision))
            if data is not None:
                row.map50, row.map50_95 = _demo_map(path, data, source.meta.input_size)
            report.rows.append(row)
    return report

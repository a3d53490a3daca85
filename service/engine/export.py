"""Exports: ONNX with a dynamic batch axis, optional FP16 and INT8 copies, a Triton model
repository; and the parts that check an export against its source, box by box with our own engine
(``compare``, ``detect_all``; ``service.demo.export_check`` runs them on generated images)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.engine.engine import Engine
from service.engine.types import Detections

__all__ = ["ExportReport", "ExportRow", "TritonOptions", "compare", "detect_all", "export_onnx",
           "export_triton", "to_fp16", "to_int8"]


@dataclass
class ExportRow:
    path: Path
    precision: str
    images: int = 0
    count_match: float = 0.0  # share of images with the same number of boxes and classes
    max_box_px: float = 0.0  # largest corner difference among matched images
    max_conf: float = 0.0
    map50: float | None = None
    map50_95: float | None = None

    @property
    def ok(self) -> bool:
        return self.precision != "fp32" or (self.count_match >= 0.98 and self.max_box_px <= 1.0)


@dataclass
class ExportReport:
    source: Path
    rows: list[ExportRow] = field(default_factory=list)
    source_map: tuple[float, float] | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def to_markdown(self) -> str:
        lines = ["| file | precision | images | same boxes | max box diff px | max conf diff "
                 "| mAP50 | mAP50-95 |", "|---|---|---|---|---|---|---|---|"]
        if self.source_map:
            lines.append(f"| {self.source.name} | source | | | | | {self.source_map[0]:.3f} "
                         f"| {self.source_map[1]:.3f} |")
        for r in self.rows:
            m50 = f"{r.map50:.3f}" if r.map50 is not None else "-"
            m = f"{r.map50_95:.3f}" if r.map50_95 is not None else "-"
            lines.append(f"| {r.path.name} | {r.precision} | {r.images} | {r.count_match:.1%} "
                         f"| {r.max_box_px:.3f} | {r.max_conf:.4f} | {m50} | {m} |")
        return "\n".join(lines)


def export_onnx(model: Path, out: Path) -> Path:
    """Export with Ultralytics: opset 17, dynamic axes, simplified with onnxslim."""
    from ultralytics import YOLO  # type: ignore[attr-defined]

    y = YOLO(str(model))
    imgsz = y.overrides.get("imgsz", 640)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / model.name
        shutil.copyfile(model, src)
        produced = YOLO(str(src)).export(format="onnx", dynamic=True, opset=17, simplify=True,
                                         imgsz=imgsz, device="cpu")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(produced, out)
    return out


def to_fp16(src: Path, dst: Path) -> Path:
    """FP16 weights and activations (for GPUs)."""
    import onnx

    from service.engine.backends.onnx_backend import half_model

    onnx.save(half_model(src), str(dst))
    return dst


def to_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8)
    return dst


def compare(a: list[Detections], b: list[Detections], row: ExportRow) -> ExportRow:
    """Fill ``row`` with how closely detections ``b`` follow reference ``a``."""
    same = 0
    for ra, rb in zip(a, b, strict=True):
        if ra.probs is not None and rb.probs is not None:  # a classifier: the same top 5
            top = np.argsort(-ra.probs, kind="stable")[:5]
            same += bool((np.argsort(-rb.probs, kind="stable")[:5] == top).all())
            row.max_conf = max(row.max_conf, float(np.abs(ra.probs - rb.probs).max()))
            continue
        if [d.class_id for d in ra.items] != [d.class_id for d in rb.items]:
            continue
        same += 1
        for da, db in zip(ra.items, rb.items, strict=True):
            diffs = [da.x_min - db.x_min, da.y_min - db.y_min, da.x_max - db.x_max, da.y_max - db.y_max]
            row.max_box_px = max(row.max_box_px, float(np.abs(diffs).max()))
            row.max_conf = max(row.max_conf, abs(da.confidence - db.confidence))
    row.images = len(a)
    row.count_match = same / max(1, len(a))
    return row


def detect_all(engine: Engine, images: list[np.ndarray], batch: int = 8) -> list[Detections]:
    """Detections for each image, in batches of ``batch`` at the default thresholds."""
    out: list[Detections] = []
    for i in range(0, len(images), batch):
        prepared = [engine.prepare_array(img) for img in images[i:i + batch]]
        out.extend(engine.infer(prepared).detections)
    return out


def _dynamic_batch(onnx_path: Path) -> tuple[str, str]:
    """The ONNX file's input and output names; refuse one whose batch axis is fixed."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inp, out = graph.input[0], graph.output[0]
    for tensor in (inp, out):
        first = tensor.type.tensor_type.shape.dim[0]
        if first.HasField("dim_value"):
            raise ValueError(f"{onnx_path.name}: {tensor.name} has a fixed batch axis "
                             f"({first.dim_value}); export it with a dynamic one")
    return inp.name, out.name


@dataclass(frozen=True)
class TritonOptions:
    """How Triton should serve the model: batching, instances, and TensorRT FP16 on GPUs."""

    max_batch_size: int = 8
    max_wait_ms: float = 5.0
    instances: int = 1
    gpu: bool = False
    tensorrt_fp16: bool = False


def export_triton(model: Path, out_dir: Path, *, name: str | None = None,
                  options: TritonOptions | None = None) -> Path:
    """Write a Triton model repository entry: ``out_dir/NAME/config.pbtxt`` (ONNX Runtime,
    dynamic batching) and ``out_dir/NAME/1/model.onnx`` with a dynamic batch axis."""
    from service.engine.triton import RAW_INPUT, RAW_OUTPUT, raw_config, to_pbtxt

    opts = options or TritonOptions()
    name = name or model.stem
    target = out_dir / name / "1" / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    if model.suffix.lower() == ".onnx":
        shutil.copyfile(model, target)
    else:
        export_onnx(model, target)
    if _dynamic_batch(target) != (RAW_INPUT, RAW_OUTPUT):
        raise ValueError(f"{model.name}: expected an Ultralytics model "
                         f"({RAW_INPUT} -> {RAW_OUTPUT})")
    engine = Engine.load(target, backend="onnx", device="cpu")
    size = engine.meta.input_size
    output = engine.backend.forward_raw(np.zeros((1, 3, size, size), np.float32)).shape[1:]
    config = raw_config(name, input_size=size, output_shape=output, names=engine.meta.classes,
                        max_batch_size=opts.max_batch_size, max_wait_ms=opts.max_wait_ms,
                        instances=opts.instances, gpu=opts.gpu or opts.tensorrt_fp16,
                        task=engine.meta.task)
    if opts.tensorrt_fp16:
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": {"precision_mode": "FP16",
                                                "max_workspace_size_bytes": str(1 << 30)}}]}}
    path = out_dir / name / "config.pbtxt"
    path.write_text(to_pbtxt(config))
    return path

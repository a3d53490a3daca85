"""``yoloserve export --format openvino``: an OpenVINO IR, FP32 or INT8 by post-training quantization.

The IR is converted from the model's ONNX file (exported first when there is none) and written in
Ultralytics' layout, ``{stem}_openvino_model/{stem}.xml`` (``{stem}_int8_openvino_model/`` for
INT8) with ``metadata.yaml`` beside it, so Ultralytics reads it too. INT8 is NNCF's post-training
quantization (MIXED preset) calibrated on images as the service letterboxes them; as Ultralytics
does, the detection head's box decoding, the DFL and every Sigmoid stay in higher precision (the
head's convolutions are quantized). bf16 needs no file of its own: it is a run-time choice
(``--precision bf16``) over the FP32 IR.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.engine.backends.openvino_backend import input_side, read_metadata
from service.engine.decode import image_files
from service.engine.engine import openvino_dir
from service.engine.errors import ModelLoadError
from service.engine.preprocess import letterbox

__all__ = ["export_openvino", "head_ignored_scope", "images_in"]

log = logging.getLogger(__name__)

def images_in(folder: Path, count: int) -> Iterator[NDArray[np.uint8]]:
    """BGR images to calibrate on: up to ``count`` image files under ``folder``."""
    import cv2

    files = image_files([folder])[:count]
    if not files:
        raise ValueError(f"no images in {folder} to calibrate on")
    for path in files:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is not None:
            yield np.asarray(img, np.uint8)


def _network_input(img: NDArray[np.uint8], size: int) -> NDArray[np.float32]:
    """What the network reads: letterboxed, RGB, 0-1, NCHW with a batch of one."""
    canvas, _ = letterbox(img, size)
    x = np.ascontiguousarray(canvas[None, :, :, ::-1].transpose(0, 3, 1, 2), np.float32)
    return x / np.float32(255)


def head_ignored_scope(model: Any) -> list[str]:
    """The ops kept out of INT8: every Sigmoid, and the detection head's own ops (box decoding,
    DFL) but not its convolution branches (``cv2``, ``cv3``, ...), as Ultralytics' exporter does."""
    ops = model.get_ordered_ops()
    sigmoids = [op.get_friendly_name() for op in ops if op.get_type_name() == "Sigmoid"]
    if not sigmoids:
        return []
    head = sigmoids[-1].rsplit("/", 1)[0] + "/"
    names = []
    for op in ops:
        name = op.get_friendly_name()
        inner = name[len(head):] if name.startswith(head) else None
        if op.get_type_name() == "Sigmoid" or (inner is not None and not inner.startswith("cv")):
            names.append(name)
    return names


def _onnx_of(model: Path) -> Path:
    if model.suffix.lower() == ".onnx":
        return model
    sibling = model.with_suffix(".onnx")
    if not sibling.is_file():
        from service.engine.export import export_onnx

        export_onnx(model, sibling)
    return sibling


def _quantize(ov_model: Any, size: int, calibration: Iterable[NDArray[np.uint8]]) -> Any:
    try:
        import nncf
    except ImportError as exc:
        raise ModelLoadError("INT8 needs NNCF: pip install 'yoloserve[quantize]'") from exc
    samples = [_network_input(img, size) for img in calibration]
    ignored = head_ignored_scope(ov_model)
    log.info("quantizing", extra={"images": len(samples), "ignored_ops": len(ignored)})
    return nncf.quantize(
        ov_model, nncf.Dataset(samples), preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(samples),
        ignored_scope=nncf.IgnoredScope(names=ignored, validate=False) if ignored else None,
    )


def export_openvino(model: Path, *, precision: str = "fp32", out: Path | None = None,
                    calibration: Iterable[NDArray[np.uint8]] = ()) -> Path:
    """Write the IR of ``model`` at ``precision`` (fp32, bf16, fp16 or int8); returns its ``.xml``.
    INT8 is calibrated on ``calibration`` (BGR images of what the model will see)."""
    import openvino as ov
    import yaml

    if precision not in {"fp32", "bf16", "fp16", "int8"}:
        raise ValueError(f"no OpenVINO export at {precision}")
    onnx_path = _onnx_of(model)
    meta = read_metadata(onnx_path)
    size = input_side(meta.get("imgsz", 640))
    ov_model = ov.convert_model(str(onnx_path))
    if precision == "int8":
        ov_model = _quantize(ov_model, size, calibration)
    folder = out or openvino_dir(model, precision)
    folder.mkdir(parents=True, exist_ok=True)
    xml = folder / f"{model.stem}.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=precision == "fp16")
    keep = ("description", "author", "version", "license", "stride", "task", "batch", "imgsz",
            "names", "channels", "kpt_shape")
    written: dict[str, Any] = {k: meta[k] for k in keep if k in meta}
    written["precision"] = "int8" if precision == "int8" else "fp32"
    (folder / "metadata.yaml").write_text(yaml.safe_dump(written, sort_keys=False))
    return xml

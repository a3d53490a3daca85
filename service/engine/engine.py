"""The engine: bytes in, detections out, usable without HTTP.

``prepare`` (decode + letterbox) is per image and thread-safe; ``infer`` stacks prepared images,
runs one forward pass and post-processes the whole batch with each image's own parameters.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from service.engine.backends import Backend, resolve_device
from service.engine.decode import ImageLimits, decode_image, decode_reduced
from service.engine.errors import ModelLoadError
from service.engine.postprocess import postprocess
from service.engine.preprocess import classify_crop, letterbox
from service.engine.tasks import postprocess_task
from service.engine.types import Detections, DetectParams, ModelMeta, Prepared

__all__ = ["BackendName", "BatchOutput", "Engine", "check_precision", "choose_backend",
           "group_by_shape", "openvino_dir", "weights_version"]

log = logging.getLogger(__name__)

BackendName = Literal["auto", "torch", "onnx", "openvino"]


@dataclass(frozen=True)
class BatchOutput:
    """Detections for each image of one forward pass, with the pass's own timings."""

    detections: list[Detections]
    inference_ms: float
    postprocess_ms: float


def weights_version(path: Path) -> str:
    """First 12 hex digits of the sha256 of the weights file."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def openvino_dir(model: Path, precision: str = "fp32") -> Path:
    """Where ``yoloserve export --format openvino`` writes the IR of ``model`` (Ultralytics' layout):
    ``{stem}_openvino_model/``, or ``{stem}_int8_openvino_model/`` for a quantized one."""
    tag = "_int8" if precision == "int8" else ""
    return model.parent / f"{model.stem}{tag}_openvino_model"


def _openvino_source(model: Path, precision: str) -> Path:
    """An IR (the quantized one for int8), else the ONNX file, for the OpenVINO backend."""
    if model.suffix.lower() == ".xml":
        return model
    ir = openvino_dir(model, precision) / f"{model.stem}.xml"
    if ir.is_file():
        return ir
    if precision == "int8":
        raise ModelLoadError(
            f"no int8 model for {model.name} (looked for {ir}): run `yoloserve export --model "
            f"{model} --format openvino --precision int8`")
    sibling = model.with_suffix(".onnx")
    if sibling.is_file():
        return sibling
    raise ModelLoadError(f"no ONNX or OpenVINO model for {model.name}: run `yoloserve export "
                         f"--model {model}` (ONNX) or `--format openvino`")


def choose_backend(model: Path, backend: BackendName, device: str,
                   precision: str = "fp32") -> tuple[str, Path]:
    """Which backend serves ``model`` at ``precision`` and from which file.

    ``auto``: an IR (``.xml``) runs on OpenVINO, and so does bf16, fp16 or int8 on a CPU; an
    ``.onnx`` file runs on ONNX Runtime; a ``.pt`` file runs on PyTorch on a GPU, and on a CPU on
    ONNX Runtime when an exported ``.onnx`` lies beside it (faster there, measured in bench/).
    """
    suffix = model.suffix.lower()
    sibling = model.with_suffix(".onnx")
    if backend == "auto":
        if suffix == ".xml" or (device == "cpu" and precision != "fp32"):
            return "openvino", _openvino_source(model, precision)
        if suffix == ".onnx":
            return "onnx", model
        if device == "cpu" and sibling.exists():
            return "onnx", sibling
        return "torch", model
    if backend == "openvino":
        return "openvino", _openvino_source(model, precision)
    if suffix == ".xml":
        raise ModelLoadError(f"an OpenVINO IR ({model.name}) runs on --backend openvino")
    if backend == "onnx":
        if suffix == ".onnx":
            return "onnx", model
        if sibling.exists():
            return "onnx", sibling
        raise ModelLoadError(f"no ONNX model for {model.name}: run `yoloserve export --model {model}`")
    if suffix == ".onnx":
        raise ModelLoadError("the torch backend needs PyTorch weights (.pt), not an ONNX model")
    return "torch", model


def group_by_shape(batch: Sequence[Prepared]) -> list[list[int]]:
    """Indices of ``batch`` grouped by input shape (rect letterboxes differ), in first-seen
    order: each group can be stacked into one forward pass."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(batch):
        groups.setdefault(p.tensor.shape, []).append(i)
    return list(groups.values())


def check_precision(precision: str, device: str, backend: str) -> None:
    """Refuse a precision this hardware or backend lacks, naming what is missing."""
    from service.engine.precision import PrecisionUnavailable, detect_hardware, missing_for

    why = missing_for(precision, detect_hardware(device), device, backend)  # type: ignore[arg-type]
    if why is not None:
        raise PrecisionUnavailable(f"--precision {precision} is not available: {why}")


class Engine:
    def __init__(self, backend: Backend, meta: ModelMeta, limits: ImageLimits | None = None,
                 decode_reduce: bool = False) -> None:
        self.backend = backend
        self.meta = meta
        self.limits = limits or ImageLimits()
        self.decode_reduce = decode_reduce
        self._stride = meta.stride if meta.letterbox == "rect" else None

    @classmethod
    def load(
        cls, model: Path | str, *, backend: BackendName = "auto", device: str = "auto",
        precision: str = "fp32", half: bool | None = None, limits: ImageLimits | None = None,
        threads: int | None = None, streams: int = 1, spin: bool = True, name: str | None = None,
        rect: bool = False, decode_reduce: bool = False, tensorrt: bool = False,
    ) -> Engine:
        """Load ``model`` at ``precision`` (``half=True`` is fp16); ``name`` names it (its
        file's stem by default). ``rect`` letterboxes to the stride multiple only;
        ``decode_reduce`` decodes large JPEGs at a reduced scale; ``tensorrt`` puts ONNX Runtime's
        TensorRT provider before CUDA's."""
        path = source = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        if half:
            precision = "fp16"
        dev = resolve_device(device)
        kind, path = choose_backend(path, backend, dev, precision)
        check_precision(precision, dev, kind)
        impl: Backend
        if kind == "onnx":
            from service.engine.backends.onnx_backend import OnnxBackend

            impl = OnnxBackend(path, dev, threads=threads, spin=spin, precision=precision,
                               tensorrt=tensorrt)
        elif kind == "openvino":
            from service.engine.backends.openvino_backend import OpenVinoBackend

            impl = OpenVinoBackend(path, precision, streams=streams, threads=threads,
                                   dynamic_shape=rect)
        else:
            from service.engine.backends.torch_backend import TorchBackend

            impl = TorchBackend(path, dev, precision=precision)
        meta = ModelMeta(
            name=name or path.stem, version=weights_version(path), backend=impl.name, device=impl.device,
            precision=impl.precision, input_size=impl.input_size, classes=dict(impl.names),
            path=path, source=source, letterbox="rect" if rect else "square",
            stride=getattr(impl, "stride", 32), task=impl.task, kpt_shape=impl.kpt_shape,
        )
        log.info("model loaded", extra={"model": meta.name, "backend": meta.backend,
                                        "precision": meta.precision})
        return cls(impl, meta, limits, decode_reduce)

    def prepare(self, data: bytes, name: str = "image") -> Prepared:
        """Decode and letterbox one image (raises ``ImageError`` for bad input)."""
        start = time.perf_counter()
        if self.decode_reduce:
            img, full = decode_reduced(data, self.meta.input_size, self.limits)
            return self.prepare_array(img, name, start, full)
        return self.prepare_array(decode_image(data, self.limits), name, start)

    def prepare_array(
        self, img: NDArray[np.uint8], name: str = "image", start: float | None = None,
        original: tuple[int, int] | None = None,
    ) -> Prepared:
        start = time.perf_counter() if start is None else start
        if self.meta.task == "classify":
            canvas, info = classify_crop(img, self.meta.input_size)
        else:
            canvas, info = letterbox(img, self.meta.input_size, self._stride, original)
        return Prepared(canvas, info, name, (time.perf_counter() - start) * 1000)

    def infer(
        self, batch: Sequence[Prepared], params: Sequence[DetectParams] | None = None
    ) -> BatchOutput:
        """One forward pass over ``batch``; ``params`` are per image (defaults when omitted)."""
        if not batch:
            return BatchOutput([], 0.0, 0.0)
        params = list(params) if params is not None else [DetectParams()] * len(batch)
        groups = group_by_shape(batch)
        if len(groups) == 1:
            return self._pass(batch, params)
        # rect letterboxes of several shapes: one pass per shape, answers back in input order
        dets: list[Detections | None] = [None] * len(batch)
        inference_ms = postprocess_ms = 0.0
        for idx in groups:
            out = self._pass([batch[i] for i in idx], [params[i] for i in idx])
            inference_ms += out.inference_ms
            postprocess_ms += out.postprocess_ms
            for i, d in zip(idx, out.detections, strict=True):
                dets[i] = d
        return BatchOutput([d for d in dets if d is not None], inference_ms, postprocess_ms)

    def _pass(self, batch: Sequence[Prepared], params: Sequence[DetectParams]) -> BatchOutput:
        t0 = time.perf_counter()
        outputs = self.backend.forward(np.stack([p.tensor for p in batch]))
        t1 = time.perf_counter()
        boxes = [p.letterbox for p in batch]
        meta = self.meta
        if meta.task == "detect":
            dets = postprocess(outputs[0], boxes, params, meta.classes)
        else:
            dets = postprocess_task(meta.task, outputs, boxes, params, meta.classes, meta.kpt_shape)
        t2 = time.perf_counter()
        return BatchOutput(dets, (t1 - t0) * 1000, (t2 - t1) * 1000)

    def warmup(self, max_batch_size: int) -> None:
        """Run every batch size that will be used once, so the first requests are not slow."""
        self.backend.warmup(range(1, max_batch_size + 1))

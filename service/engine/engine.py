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
from service.engine.decode import ImageLimits, decode_image
from service.engine.errors import ModelLoadError
from service.engine.postprocess import postprocess
from service.engine.preprocess import letterbox
from service.engine.types import Detections, DetectParams, ModelMeta, Prepared

__all__ = ["BackendName", "BatchOutput", "Engine", "choose_backend", "weights_version"]

log = logging.getLogger(__name__)

BackendName = Literal["auto", "torch", "onnx"]


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


def choose_backend(model: Path, backend: BackendName, device: str) -> tuple[str, Path]:
    """Which backend serves ``model`` and from which file.

    ``auto``: an ``.onnx`` file runs on ONNX Runtime; a ``.pt`` file runs on PyTorch on a GPU, and on
    a CPU on ONNX Runtime when an exported ``.onnx`` lies beside it (faster there, measured in bench/).
    """
    suffix = model.suffix.lower()
    sibling = model.with_suffix(".onnx")
    if backend == "auto":
        if suffix == ".onnx":
            return "onnx", model
        if device == "cpu" and sibling.exists():
            return "onnx", sibling
        return "torch", model
    if backend == "onnx":
        if suffix == ".onnx":
            return "onnx", model
        if sibling.exists():
            return "onnx", sibling
        raise ModelLoadError(f"no ONNX model for {model.name}: run `yoloserve export --model {model}`")
    if suffix == ".onnx":
        raise ModelLoadError("the torch backend needs PyTorch weights (.pt), not an ONNX model")
    return "torch", model


class Engine:
    def __init__(self, backend: Backend, meta: ModelMeta, limits: ImageLimits | None = None) -> None:
        self.backend = backend
        self.meta = meta
        self.limits = limits or ImageLimits()

    @classmethod
    def load(
        cls, model: Path | str, *, backend: BackendName = "auto", device: str = "auto",
        half: bool | None = None, limits: ImageLimits | None = None, threads: int | None = None,
        spin: bool = True, name: str | None = None,
    ) -> Engine:
        """Load ``model``; ``name`` names it (its file's stem by default)."""
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        dev = resolve_device(device)
        kind, path = choose_backend(path, backend, dev)
        impl: Backend
        if kind == "onnx":
            from service.engine.backends.onnx_backend import OnnxBackend

            impl = OnnxBackend(path, dev, threads=threads, spin=spin)
        else:
            from service.engine.backends.torch_backend import TorchBackend

            impl = TorchBackend(path, dev, half=half)
        meta = ModelMeta(
            name=name or path.stem, version=weights_version(path), backend=impl.name, device=impl.device,
            precision=impl.precision, input_size=impl.input_size, classes=dict(impl.names),
        )
        log.info("model loaded", extra={"model": meta.name, "backend": meta.backend})
        return cls(impl, meta, limits)

    def prepare(self, data: bytes, name: str = "image") -> Prepared:
        """Decode and letterbox one image (raises ``ImageError`` for bad input)."""
        start = time.perf_counter()
        img = decode_image(data, self.limits)
        return self.prepare_array(img, name, start)

    def prepare_array(
        self, img: NDArray[np.uint8], name: str = "image", start: float | None = None
    ) -> Prepared:
        start = time.perf_counter() if start is None else start
        canvas, info = letterbox(img, self.meta.input_size)
        return Prepared(canvas, info, name, (time.perf_counter() - start) * 1000)

    def infer(
        self, batch: Sequence[Prepared], params: Sequence[DetectParams] | None = None
    ) -> BatchOutput:
        """One forward pass over ``batch``; ``params`` are per image (defaults when omitted)."""
        if not batch:
            return BatchOutput([], 0.0, 0.0)
        params = list(params) if params is not None else [DetectParams()] * len(batch)
        t0 = time.perf_counter()
        preds = self.backend.forward(np.stack([p.tensor for p in batch]))
        t1 = time.perf_counter()
        dets = postprocess(preds, [p.letterbox for p in batch], params, self.meta.classes)
        t2 = time.perf_counter()
        return BatchOutput(dets, (t1 - t0) * 1000, (t2 - t1) * 1000)

    def warmup(self, max_batch_size: int) -> None:
        """Run every batch size that will be used once, so the first requests are not slow."""
        self.backend.warmup(range(1, max_batch_size + 1))

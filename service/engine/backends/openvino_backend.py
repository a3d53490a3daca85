"""OpenVINO backend: an ONNX model or an OpenVINO IR on the CPU, at fp32, bf16, fp16 or int8.

The letterboxed uint8 BGR batch goes in as it is: OpenVINO's pre-processing (element type, colour
order, layout, scale) is compiled into the model, so no float copy of the batch is made in Python.
``forward_raw`` (the network alone, for ``/v2``'s ``-raw`` model) compiles the plain network the
first time it is used.

Threading follows the service's compute plan: ``streams`` forward passes may run at once (one
OpenVINO stream each, ``threads`` threads each), every worker thread with its own infer request.
"""

from __future__ import annotations

import ast
import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from service.engine.backends.base import Outputs, task_of
from service.engine.errors import ModelLoadError

__all__ = ["OpenVinoBackend", "input_side", "read_metadata"]

log = logging.getLogger(__name__)

_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _from_yaml(path: Path) -> dict[str, Any]:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    return dict(data) if isinstance(data, dict) else {}


def _from_onnx(path: Path) -> dict[str, Any]:
    import onnx

    props = onnx.load(str(path), load_external_data=False).metadata_props
    out: dict[str, Any] = {}
    for p in props:
        try:
            out[p.key] = ast.literal_eval(p.value)
        except (ValueError, SyntaxError):
            out[p.key] = p.value
    return out


def read_metadata(path: Path) -> dict[str, Any]:
    """Ultralytics' metadata of an ONNX file (its properties) or an IR (``metadata.yaml`` beside it)."""
    meta = _from_onnx(path) if path.suffix.lower() == ".onnx" else (
        _from_yaml(path.parent / "metadata.yaml") if (path.parent / "metadata.yaml").is_file()
        else {})
    if "names" not in meta:
        raise ModelLoadError(f"{path.name} carries no Ultralytics metadata (names, imgsz); for an "
                             "IR, metadata.yaml must lie beside it")
    return meta


def input_side(imgsz: Any) -> int:
    """The side of the square input from Ultralytics' ``imgsz`` (an int or ``[h, w]``)."""
    return int(max(imgsz) if isinstance(imgsz, list | tuple) else imgsz)


class OpenVinoBackend:
    name = "openvino"

    def __init__(self, path: Path, precision: str = "fp32", *, streams: int = 1,
                 threads: int | None = None, dynamic_shape: bool = False) -> None:
        import openvino as ov

        meta = read_metadata(path)
        self.names = {int(k): str(v) for k, v in dict(meta["names"]).items()}
        self.input_size = input_side(meta.get("imgsz", 640))
        self.stride = int(meta.get("stride", 32))
        self.task, self.kpt_shape = task_of(meta, self.names)
        quantized = str(meta.get("precision", "")) == "int8"
        if (precision == "int8") != quantized:
            raise ModelLoadError(
                f"{path.name} is {'an int8' if quantized else 'not an int8'} model; int8 is served "
                "from a model quantized by `yoloserve export --format openvino --precision int8`")
        self.device = "cpu"
        self.precision = precision
        self._core = ov.Core()
        try:
            self._network = self._core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises plain RuntimeErrors for unreadable files
            raise ModelLoadError(f"cannot load {path.name} with OpenVINO: {exc}") from exc
        side = -1 if dynamic_shape else self.input_size
        self._network.reshape({self._network.inputs[0].get_any_name(): [-1, 3, side, side]})
        # an int8 model's layers left unquantized (the head, the DFL) stay at fp32
        hint = "f32" if precision == "int8" else _HINT[precision]
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": str(max(1, streams)),
            "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
        }
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = str(max(1, threads) * max(1, streams))
        self._compiled = self._compile(self._with_preprocessing(ov))
        self._raw_compiled: Any = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def _with_preprocessing(self, ov: Any) -> Any:
        """The network behind uint8 NHWC BGR in, scaled to RGB 0-1 NCHW inside the model."""
        from openvino.preprocess import ColorFormat, PrePostProcessor

        ppp = PrePostProcessor(self._network.clone())
        inp = ppp.input()
        inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")) \
            .set_color_format(ColorFormat.BGR)
        inp.model().set_layout(ov.Layout("NCHW"))
        inp.preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB) \
            .scale(255.0)
        return ppp.build()

    def _compile(self, model: Any) -> Any:
        try:
            return self._core.compile_model(model, "CPU", self._config)
        except Exception as exc:
            raise ModelLoadError(f"OpenVINO cannot compile the model: {exc}") from exc

    def _request(self, raw: bool = False) -> Any:
        """This thread's infer request (one per worker thread and model)."""
        key = "raw" if raw else "main"
        req = getattr(self._local, key, None)
        if req is None:
            compiled = self._compiled
            if raw:
                with self._lock:
                    if self._raw_compiled is None:
                        self._raw_compiled = self._compile(self._network)
                compiled = self._raw_compiled
            req = compiled.create_infer_request()
            setattr(self._local, key, req)
        return req

    def forward(self, batch: NDArray[np.uint8]) -> Outputs:
        outs = self._run(self._request(), np.ascontiguousarray(batch))
        return tuple(torch.from_numpy(out) for out in outs)

    def forward_raw(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return self._run(self._request(raw=True), np.ascontiguousarray(batch, dtype=np.float32))[0]

    @staticmethod
    def _run(request: Any, x: NDArray[Any]) -> list[NDArray[np.float32]]:
        request.infer({0: x})
        return [np.array(request.get_output_tensor(i).data, dtype=np.float32, copy=True)
                for i in range(len(request.model_outputs))]

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        for n in batch_sizes:
            self.forward(np.full((n, self.input_size, self.input_size, 3), 114, np.uint8))

"""ONNX Runtime backend: CUDA provider when a GPU is present, the CPU provider otherwise.

Class names and input size come from the metadata that Ultralytics writes into the exported model.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from service.engine.backends.base import Outputs, task_of
from service.engine.errors import ModelLoadError

__all__ = ["OnnxBackend", "half_model"]

log = logging.getLogger(__name__)


def _providers(device: str, precision: str = "fp32", tensorrt: bool = False) -> list[Any]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" in available:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA and cuDNN from the nvidia wheels that torch brings
        index = int(device.split(":")[1]) if ":" in device else 0
        cuda = {"device_id": index, "cudnn_conv_algo_search": "EXHAUSTIVE"}
        chain: list[Any] = [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
        if tensorrt and "TensorrtExecutionProvider" in available:
            trt = {"device_id": index, "trt_fp16_enable": precision == "fp16",
                   "trt_engine_cache_enable": True}
            chain.insert(0, ("TensorrtExecutionProvider", trt))
        return chain
    return ["CPUExecutionProvider"]


def half_model(src: Path) -> Any:
    """An FP16 copy of an ONNX model (for GPUs); Resize stays FP32, as its scales must."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    del model.graph.value_info[:]  # stale inferred types would contradict the inserted casts
    to_float = {n.name for n in model.graph.node if n.op_type == "Cast"
                and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)}
    half = float16.convert_float_to_float16(model, keep_io_types=False, op_block_list=["Resize"])
    for node in half.graph.node:  # the model's own casts to FP32 now cast to FP16
        if node.name in to_float:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT16
    return half


def _metadata(session: Any) -> tuple[dict[int, str], int, int, dict[str, str]]:
    meta = session.get_modelmeta().custom_metadata_map
    try:
        names = {int(k): str(v) for k, v in ast.literal_eval(meta["names"]).items()}
        imgsz = ast.literal_eval(meta.get("imgsz", "[640, 640]"))
    except (KeyError, ValueError, SyntaxError) as exc:
        raise ModelLoadError("the ONNX model carries no Ultralytics metadata (names, imgsz)") from exc
    size = int(max(imgsz) if isinstance(imgsz, list | tuple) else imgsz)
    return names, size, int(meta.get("stride", "32")), dict(meta)


def _input_type(path: Path) -> str:
    import onnx

    elem = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.elem_type
    return "float16" if elem == onnx.TensorProto.FLOAT16 else "float"


class OnnxBackend:
    name = "onnx"

    def __init__(
        self, path: Path, device: str, threads: int | None = None, spin: bool = True,
        precision: str = "fp32", tensorrt: bool = False,
    ) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        providers = _providers(device, precision, tensorrt)
        if providers == ["CPUExecutionProvider"]:
            # Intra-op threads spin between the operators of a run (measured faster than sleeping:
            # bench/README.md, "ONNX Runtime thread spinning") and stop when the run ends: between
            # two batches the CPU goes to the event loop and the decoders, not to threads waiting
            # for the next batch. ``spin=False`` makes them sleep during a run too, which leaves
            # more CPU to the event loop when the machine is saturated, at the cost of that speed.
            opts.add_session_config_entry("session.force_spinning_stop", "1")
            if not spin:
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if precision not in {"fp32", "fp16"}:
            raise ModelLoadError(f"ONNX Runtime serves fp32 or fp16, not {precision}")
        source: str | bytes = str(path)
        if precision == "fp16" and "float16" not in _input_type(path) and not tensorrt:
            source = half_model(path).SerializeToString()  # FP16 on the GPU, converted once here
        try:
            self._session = ort.InferenceSession(source, opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelLoadError(f"cannot load ONNX model {path.name}: {exc}") from exc
        on_gpu = self._session.get_providers()[0] in {"CUDAExecutionProvider",
                                                      "TensorrtExecutionProvider"}
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        self._dtype = np.float16 if "float16" in inp.type else np.float32
        self.names, self.input_size, self.stride, meta = _metadata(self._session)
        self.task, self.kpt_shape = task_of(dict(meta), self.names)
        self.device = device if on_gpu else "cpu"
        self.precision = "fp16" if self._dtype == np.float16 or (on_gpu and precision == "fp16") \
            else "fp32"

    def forward(self, batch: NDArray[np.uint8]) -> Outputs:
        # BHWC BGR uint8 -> BCHW RGB /255 in one pass per channel (no transposed temporaries)
        x = np.empty((batch.shape[0], 3, *batch.shape[1:3]), self._dtype)
        for c in range(3):
            np.divide(batch[..., 2 - c], np.float32(255), out=x[:, c])
        return tuple(torch.from_numpy(out) for out in self._run(x))

    def forward_raw(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        return self._run(np.ascontiguousarray(batch, dtype=self._dtype))[0]

    def _run(self, x: NDArray[Any]) -> list[NDArray[np.float32]]:
        return [np.asarray(out, dtype=np.float32) for out in self._session.run(None, {self._input: x})]

    def warmup(self, batch_sizes: Iterable[int]) -> None:
        for n in batch_sizes:
            self.forward(np.full((n, self.input_size, self.input_size, 3), 114, np.uint8))

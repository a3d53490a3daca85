"""How a model looks to Open Inference Protocol clients and to Triton: its tensor metadata and
its Triton model configuration (the JSON of ``.../config``, ``config.pbtxt`` in an exported
repository).

Ultralytics' Triton client reads the configuration's input and output names and data types, and
its class names and input size from ``parameters.metadata`` (a Python literal, as Ultralytics
writes it when it exports a model for Triton).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DETECT_INPUT", "DETECT_OUTPUTS", "RAW_INPUT", "RAW_OUTPUT", "Tensor", "detect_config",
           "raw_config", "to_pbtxt", "ultralytics_metadata"]

DETECT_INPUT = "IMAGE"
DETECT_OUTPUTS = ("boxes", "scores", "classes", "num_detections")
RAW_INPUT = "images"
RAW_OUTPUT = "output0"
_CONFIG_TYPES = {"BYTES": "TYPE_STRING", "FP32": "TYPE_FP32", "FP16": "TYPE_FP16",
                 "INT32": "TYPE_INT32", "UINT8": "TYPE_UINT8"}


@dataclass(frozen=True)
class Tensor:
    """A tensor's name, protocol data type and shape with the batch dimension first (-1)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    def config(self) -> dict[str, Any]:
        """Triton's form: without the batch dimension; a 1-D tensor as dims [1] reshaped to []."""
        dims = list(self.shape[1:])
        entry: dict[str, Any] = {"name": self.name, "data_type": _CONFIG_TYPES[self.datatype],
                                 "dims": dims or [1]}
        if not dims:
            entry["reshape"] = {"shape": []}
        return entry


def detect_tensors(task: str = "detect", kpt_shape: tuple[int, int] | None = None,
                   classes: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """The end-to-end form: encoded images in, EfficientNMS-style detections out, and what the
    model's task adds: ``masks`` (each detection's COCO RLE as JSON, BYTES), ``keypoints``,
    ``rotated_boxes`` (xywhr); a classifier answers ``probabilities`` alone."""
    inputs = [Tensor(DETECT_INPUT, "BYTES", (-1,))]
    if task == "classify":
        return inputs, [Tensor("probabilities", "FP32", (-1, classes or -1))]
    outputs = [Tensor("boxes", "FP32", (-1, -1, 4)), Tensor("scores", "FP32", (-1, -1)),
               Tensor("classes", "INT32", (-1, -1)), Tensor("num_detections", "INT32", (-1,))]
    if task == "segment":
        outputs.append(Tensor("masks", "BYTES", (-1, -1)))
    elif task == "pose":
        k, d = kpt_shape or (17, 3)
        outputs.append(Tensor("keypoints", "FP32", (-1, -1, k, max(d, 3))))
    elif task == "obb":
        outputs.append(Tensor("rotated_boxes", "FP32", (-1, -1, 5)))
    return inputs, outputs


def raw_tensors(input_size: int, output_shape: Sequence[int]) -> tuple[list[Tensor], list[Tensor]]:
    """The network itself: letterboxed RGB in 0-1 in, its prediction tensor out."""
    return ([Tensor(RAW_INPUT, "FP32", (-1, 3, input_size, input_size))],
            [Tensor(RAW_OUTPUT, "FP32", (-1, *output_shape))])


def ultralytics_metadata(names: dict[int, str], input_size: int, batch: int,
                         stride: int = 32, task: str = "detect") -> str:
    return repr({"task": task, "stride": stride, "batch": batch, "channels": 3,
                 "imgsz": [input_size, input_size], "names": dict(names), "end2end": False})


def _config(name: str, platform: str, inputs: list[Tensor], outputs: list[Tensor], *,
            max_batch_size: int, max_wait_ms: float, instances: int, gpu: bool,
            metadata: str) -> dict[str, Any]:
    return {
        "name": name,
        "platform": platform,
        "max_batch_size": max_batch_size,
        "input": [t.config() for t in inputs],
        "output": [t.config() for t in outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": round(max_wait_ms * 1000)},
        "instance_group": [{"count": instances, "kind": "KIND_GPU" if gpu else "KIND_CPU"}],
        "parameters": {"metadata": {"string_value": metadata}},
    }


def raw_config(name: str, *, input_size: int, output_shape: Sequence[int],
               names: dict[int, str], max_batch_size: int, max_wait_ms: float,
               instances: int = 1, gpu: bool = False,
               platform: str = "onnxruntime_onnx", task: str = "detect") -> dict[str, Any]:
    inputs, outputs = raw_tensors(input_size, output_shape)
    meta = ultralytics_metadata(names, input_size, max_batch_size, task=task)
    return _config(name, platform, inputs, outputs, max_batch_size=max_batch_size,
                   max_wait_ms=max_wait_ms, instances=instances, gpu=gpu, metadata=meta)


def detect_config(name: str, *, input_size: int, names: dict[int, str], max_batch_size: int,
                  max_wait_ms: float, instances: int = 1, gpu: bool = False, task: str = "detect",
                  kpt_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    inputs, outputs = detect_tensors(task, kpt_shape, len(names))
    meta = ultralytics_metadata(names, input_size, max_batch_size, task=task)
    return _config(name, "yoloserve", inputs, outputs, max_batch_size=max_batch_size,
                   max_wait_ms=max_wait_ms, instances=instances, gpu=gpu, metadata=meta)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.startswith(("TYPE_", "KIND_", "FORMAT_")):
        return value  # an enum value: TYPE_FP32, KIND_GPU
    return _quoted(str(value))


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _pbtxt(obj: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for key, value in obj.items():
        if key == "parameters" and isinstance(value, dict):  # a protobuf map: key/value entries
            for k, v in value.items():
                lines.append(f"{pad}parameters {{")
                lines.append(f'{pad}  key: "{k}"')
                if isinstance(v, dict):
                    lines.append(f"{pad}  value {{")
                    lines.extend(_pbtxt(v, indent + 2))
                    lines.append(f"{pad}  }}")
                else:
                    lines.append(f"{pad}  value: {_quoted(str(v))}")
                lines.append(f"{pad}}}")
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and (not value or not isinstance(value[0], dict)):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
            continue
        for item in items:
            if isinstance(item, dict):
                lines.append(f"{pad}{key} {{")
                lines.extend(_pbtxt(item, indent + 1))
                lines.append(f"{pad}}}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    return lines


def to_pbtxt(config: dict[str, Any]) -> str:
    """A model configuration in protobuf text format (Triton's ``config.pbtxt``)."""
    return "\n".join(_pbtxt(config, 0)) + "\n"

"""The Open Inference Protocol (KServe v2 / Triton) apart from its transport, shared by the REST
front (``/v2``) and the gRPC front: a decoded request (:class:`Decoded`), the tensors answered
(:class:`Output`), the models it names and their metadata and configuration, and running a request:

- ``NAME``: encoded images (``IMAGE``, BYTES) through the same path and batcher as ``/v1/detect``;
  the answer in the layout of TensorRT's EfficientNMS, padded to ``max_det`` per image;
- ``NAME-raw``: the network's own input and output, through the model's raw batcher.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from service.api.bodies import resolve_params
from service.engine.triton import (
    DETECT_INPUT,
    RAW_INPUT,
    RAW_OUTPUT,
    detect_config,
    detect_tensors,
    raw_config,
    raw_tensors,
)
from service.errors import ServiceError, to_service_error
from service.runtime.inferencer import Inferencer
from service.runtime.registry import ModelNotFound, ModelRegistry, ServedModel
from service.runtime.result import Result
from service.settings import Settings
from wire import errors as codes

__all__ = [
    "DTYPES",
    "VERSION",
    "Decoded",
    "Output",
    "Target",
    "infer",
    "infer_detect",
    "infer_raw",
    "invalid",
    "model_config",
    "model_metadata",
    "pack_bytes",
    "split_bytes",
    "target",
]

VERSION = "1"  # each model has one version; its weights' hash is accepted too


DTYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}


def invalid(message: str) -> ServiceError:
    return ServiceError(message, row=codes.INVALID_REQUEST)


@dataclass(frozen=True)
class Decoded:
    """A request: its id, parameters, inputs by name (arrays, or lists of bytes for BYTES), the
    outputs asked for (None: all) and whether each is wanted in binary."""

    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, NDArray[Any] | list[bytes]]
    outputs: list[str] | None
    binary: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    binary_inputs: frozenset[str] = frozenset()  # the inputs sent as binary data


@dataclass(frozen=True)
class Output:
    name: str
    datatype: str
    array: NDArray[Any]


def split_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    items, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise invalid(f"input {name!r}: truncated BYTES element")
        (size,) = struct.unpack_from("<I", raw, at)
        items.append(raw[at + 4: at + 4 + size])
        at += 4 + size
    if at != len(raw) or len(items) != count:
        raise invalid(f"input {name!r}: {len(items)} BYTES elements for a shape of {count}")
    return items


def count(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def pack_bytes(items: Iterable[Any]) -> bytes:
    """BYTES elements in binary form: each a 4-byte little-endian length and the bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


class Target:
    """A model name of the protocol: a served model's detection form or its raw form."""

    def __init__(self, model: ServedModel, raw: bool) -> None:
        self.model = model
        self.raw = raw
        self.name = model.raw.name if raw else model.name


def target(registry: ModelRegistry, name: str, version: str | None = None) -> Target:
    """The model ``name`` (``NAME`` or ``NAME-raw``), of ``version`` when one is given (``1``,
    or the weights' hash); 404 otherwise."""
    served = registry.raw(name)
    found = Target(served, True) if served else Target(registry.get(name), False)
    if version and version not in (VERSION, found.model.inferencer.meta.version):
        raise ModelNotFound(f"model {found.name!r} has no version {version!r}; it has {VERSION!r}")
    return found


def _platform(target: Target) -> str:
    if not target.raw:
        return "yoloserve"
    return "onnxruntime_onnx" if target.model.inferencer.meta.backend == "onnx" else "pytorch_libtorch"


def model_metadata(target: Target) -> dict[str, Any]:
    """The protocol's model metadata: name, versions, platform, inputs and outputs."""
    m = target.model
    if target.raw:
        inputs, outputs = raw_tensors(m.raw.input_shape[-1], m.raw.output_shape)
    else:
        meta = m.inferencer.meta
        inputs, outputs = detect_tensors(meta.task, meta.kpt_shape, len(meta.classes))
    return {"name": target.name, "versions": [VERSION], "platform": _platform(target),
            "inputs": [t.metadata() for t in inputs], "outputs": [t.metadata() for t in outputs]}


def model_config(target: Target, settings: Settings) -> dict[str, Any]:
    """Triton's model configuration (its ``config.pbtxt`` as JSON)."""
    m, s = target.model, settings
    meta = m.inferencer.meta
    common: dict[str, Any] = {
        "names": meta.classes, "input_size": meta.input_size, "max_batch_size": s.max_batch_size,
        "max_wait_ms": s.max_wait_ms, "instances": m.inferencer.instances,
        "gpu": meta.device.startswith("cuda")}
    if target.raw:
        return raw_config(target.name, output_shape=m.raw.output_shape, platform=_platform(target),
                          task=meta.task, **common)
    return detect_config(target.name, task=meta.task, kpt_shape=meta.kpt_shape, **common)


_PARAMS = ("conf", "iou", "max_det", "classes")


def _pick(request: Decoded, outputs: list[Output]) -> list[Output]:
    if request.outputs is None:
        return outputs
    by_name = {o.name: o for o in outputs}
    unknown = [n for n in request.outputs if n not in by_name]
    if unknown:
        raise invalid(f"unknown output {unknown[0]!r}; outputs: {', '.join(by_name)}")
    return [by_name[n] for n in request.outputs]


def _only_input(request: Decoded, name: str) -> Any:
    if set(request.inputs) != {name}:
        raise invalid(f"expected one input named {name!r}, got {sorted(request.inputs)}")
    return request.inputs[name]


def _image_bytes(value: Any, binary: bool) -> list[bytes]:
    """IMAGE elements: raw bytes in binary form; base64 strings in JSON."""
    if isinstance(value, np.ndarray):
        raise invalid(f"input {DETECT_INPUT!r} must be BYTES")
    if binary:
        return list(value)
    try:
        return [base64.b64decode(item, validate=True) for item in value]
    except (binascii.Error, ValueError):
        raise invalid(f"{DETECT_INPUT!r} elements sent as JSON must be base64 strings") from None


def _pack(results: list[Result], max_det: int, task: str) -> list[Output]:
    """The detections of each image, padded to ``max_det`` (EfficientNMS' layout), at the
    model's own precision, with what the model's task adds; a classifier's probabilities."""
    n = len(results)
    if task == "classify":
        probs = [r.detections.probs for r in results]
        return [Output("probabilities", "FP32",
                       np.stack([p for p in probs if p is not None]).astype(np.float32))]
    boxes = np.zeros((n, max_det, 4), np.float32)
    scores = np.zeros((n, max_det), np.float32)
    classes = np.zeros((n, max_det), np.int32)
    counts = np.zeros((n,), np.int32)
    for i, result in enumerate(results):
        dets = result.detections
        k = counts[i] = len(dets)
        boxes[i, :k] = dets.boxes
        scores[i, :k] = dets.scores
        classes[i, :k] = dets.class_ids
    out = [Output("boxes", "FP32", boxes), Output("scores", "FP32", scores),
           Output("classes", "INT32", classes), Output("num_detections", "INT32", counts)]
    return out + _task_outputs(results, max_det, task)


def _task_outputs(results: list[Result], max_det: int, task: str) -> list[Output]:
    n = len(results)
    if task == "segment":
        masks = np.full((n, max_det), b"", dtype=object)
        for i, r in enumerate(results):
            for j, rle in enumerate(r.detections.rles or []):
                masks[i, j] = orjson.dumps(rle)
        return [Output("masks", "BYTES", masks)]
    if task == "pose":
        shapes = [r.detections.keypoints.shape[1:] for r in results
                  if r.detections.keypoints is not None and len(r.detections.keypoints)]
        k, d = shapes[0] if shapes else (0, 3)
        kpts = np.zeros((n, max_det, k, d), np.float32)
        for i, r in enumerate(results):
            if r.detections.keypoints is not None and len(r.detections.keypoints):
                kpts[i, :len(r.detections)] = r.detections.keypoints
        return [Output("keypoints", "FP32", kpts)]
    if task == "obb":
        rotated = np.zeros((n, max_det, 5), np.float32)
        for i, r in enumerate(results):
            if r.detections.rotated is not None:
                rotated[i, :len(r.detections)] = r.detections.rotated
        return [Output("rotated_boxes", "FP32", rotated)]
    return []


async def infer_detect(inferencer: Inferencer, request: Decoded, deadline: float | None,
                       protocol: str = "v2") -> list[Output]:
    images = _image_bytes(_only_input(request, DETECT_INPUT), DETECT_INPUT in request.binary_inputs)
    given = {k: request.parameters[k] for k in _PARAMS if k in request.parameters}
    if isinstance(given.get("classes"), str):
        given["classes"] = given["classes"].split(",")
    params = resolve_params(given, {}, inferencer.classes)
    if inferencer.task == "segment":
        params = replace(params, mask_format="rle")  # masks travel as COCO RLE
    outcomes = await asyncio.gather(
        *(inferencer.detect(data, f"image{i}", params, deadline, protocol=protocol)
          for i, data in enumerate(images)), return_exceptions=True)
    results: list[Result] = []
    for outcome in outcomes:
        if isinstance(outcome, Result):
            results.append(outcome)
        elif isinstance(outcome, Exception):
            err = to_service_error(outcome)  # the first failing image fails the request
            if err is outcome:
                raise err
            raise err from outcome
        else:
            raise outcome
    return _pick(request, _pack(results, params.max_det, inferencer.task))


async def infer_raw(model: ServedModel, request: Decoded, deadline: float | None) -> list[Output]:
    runner = model.raw
    batch = _only_input(request, RAW_INPUT)
    if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
        raise invalid(f"input {RAW_INPUT!r} must be FP32")
    if batch.ndim != 4 or batch.shape[1:] != runner.input_shape:
        raise invalid(f"input {RAW_INPUT!r} must have shape [-1, {', '.join(map(str, runner.input_shape))}]"
                      f", not {list(batch.shape)}")
    out = await runner.infer(batch, deadline)
    return _pick(request, [Output(RAW_OUTPUT, "FP32", out)])


async def infer(target: Target, request: Decoded, deadline: float | None, protocol: str
                ) -> list[Output]:
    """Run ``request`` on ``target``; ``protocol`` (``v2``, ``grpc``) labels its images in the
    metrics."""
    if target.raw:
        return await infer_raw(target.model, request, deadline)
    return await infer_detect(target.model.inferencer, request, deadline, protocol)

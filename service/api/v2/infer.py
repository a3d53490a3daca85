"""Running an Open Inference Protocol request on a served model, in either form:

- ``NAME``: encoded images (``IMAGE``, BYTES) through the same path and batcher as ``/v1/detect``;
  the answer in the layout of TensorRT's EfficientNMS, padded to ``max_det`` per image;
- ``NAME-raw``: the network's own input and output, through the model's raw batcher.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from service.api.bodies import resolve_params
from service.api.v2.tensors import Decoded, Output, invalid
from service.engine.triton import DETECT_INPUT, RAW_INPUT, RAW_OUTPUT
from service.errors import to_service_error
from service.runtime.inferencer import Inferencer
from service.runtime.registry import ServedModel
from service.runtime.result import Result

__all__ = ["infer_detect", "infer_raw"]

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


async def infer_detect(inferencer: Inferencer, request: Decoded, deadline: float | None
                       ) -> list[Output]:
    images = _image_bytes(_only_input(request, DETECT_INPUT), DETECT_INPUT in request.binary_inputs)
    given = {k: request.parameters[k] for k in _PARAMS if k in request.parameters}
    if isinstance(given.get("classes"), str):
        given["classes"] = given["classes"].split(",")
    params = resolve_params(given, {}, inferencer.classes)
    if inferencer.task == "segment":
        params = replace(params, mask_format="rle")  # masks travel as COCO RLE
    outcomes = await asyncio.gather(
        *(inferencer.detect(data, f"image{i}", params, deadline, protocol="v2")
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

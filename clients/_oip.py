"""The detection form of the Open Inference Protocol (model ``NAME``) as the gRPC client speaks it:
encoded images in (``IMAGE``, BYTES, with ``conf``/``iou``/``max_det``/``classes`` as request
parameters), and ``/v1``'s answers rebuilt from the tensors that come back (``boxes``, ``scores``,
``classes``, ``num_detections``, and ``masks``, ``keypoints`` or ``rotated_boxes`` by task; a
classifier's ``probabilities``), rounded as ``/v1`` rounds them; and ``/v1/model(s)`` rebuilt
from each model's ``ModelConfig`` and the ``RepositoryIndex`` (:func:`model_info`,
:func:`models_response`).

Pure Python (``array``, ``struct``): the light install has no numpy. What the tensors do not carry
is filled in here (see :func:`metadata`) and listed in the README.
"""

from __future__ import annotations

import ast
import math
import struct
import sys
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from clients.errors import InvalidRequest, ProtocolError
from wire.params import CONF, IOU
from wire.schemas import (
    ClassificationResult,
    ClassScore,
    Detection,
    DetectionResult,
    ImageDimensions,
    Keypoint,
    MaskRLE,
    ModelEvaluation,
    ModelInfo,
    ModelsResponse,
    ProcessingMetadata,
    RotatedBox,
    Timings,
    box_fields,
)

__all__ = ["Call", "Tensors", "class_names", "classification", "detection_results", "infer_request",
           "model_info", "models_response", "served_names"]

IMAGE_INPUT = "IMAGE"
RAW_SUFFIX = "-raw"  # the name of a model's raw network, beside the model's own
_ARRAY_CODES = {"FP32": "f", "INT32": "i", "INT64": "q", "FP64": "d", "UINT8": "B"}


@dataclass(frozen=True, slots=True)
class Call:
    """What the client knows of one call that the answer does not say."""

    names: Sequence[str]  # each image's name
    sizes: Sequence[tuple[int, int]]  # each image's (width, height)
    conf: float | None
    iou: float | None
    class_names: dict[int, str]
    mask_format: str | None
    elapsed_ms: float


def infer_request(messages: dict[str, Any], model: str, images: Sequence[bytes], *,
                  conf: float | None, iou: float | None, max_det: int | None,
                  classes: Sequence[int | str] | None, request_id: str) -> Any:
    """A ``ModelInferRequest`` of ``images`` in ``raw_input_contents`` (as Triton's clients send)."""
    request = messages["ModelInferRequest"](model_name=model, id=request_id)
    request.inputs.add(name=IMAGE_INPUT, datatype="BYTES", shape=[len(images)])
    request.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in images))
    params = request.parameters
    if conf is not None:
        params["conf"].double_param = conf
    if iou is not None:
        params["iou"].double_param = iou
    if max_det is not None:
        params["max_det"].int64_param = max_det
    if classes is not None:
        params["classes"].string_param = ",".join(str(c) for c in classes)
    return request


class Tensors:
    """A ``ModelInferResponse``'s outputs by name: their shapes and flat values."""

    def __init__(self, response: Any) -> None:
        raw = response.raw_output_contents
        if len(raw) != len(response.outputs):
            raise ProtocolError(f"{len(raw)} raw_output_contents for {len(response.outputs)} "
                                "outputs (typed contents are not read)")
        self.model = response.model_name
        self.version = response.model_version
        self.shapes: dict[str, list[int]] = {}
        self.values: dict[str, Sequence[Any]] = {}
        for tensor, data in zip(response.outputs, raw, strict=True):
            self.shapes[tensor.name] = list(tensor.shape)
            self.values[tensor.name] = _values(tensor.datatype, data, tensor.name)

    def get(self, name: str) -> tuple[list[int], Sequence[Any]]:
        if name not in self.values:
            raise ProtocolError(f"the answer has no output {name!r}")
        return self.shapes[name], self.values[name]

    def has(self, name: str) -> bool:
        return name in self.values


def _values(datatype: str, data: bytes, name: str) -> Sequence[Any]:
    if datatype == "BYTES":
        items, at = [], 0
        while at + 4 <= len(data):
            (size,) = struct.unpack_from("<I", data, at)
            items.append(data[at + 4: at + 4 + size])
            at += 4 + size
        return items
    code = _ARRAY_CODES.get(datatype)
    if code is None:
        raise ProtocolError(f"output {name!r}: unexpected datatype {datatype}")
    values = array(code)
    try:
        values.frombytes(data)
    except ValueError as exc:
        raise ProtocolError(f"output {name!r}: {len(data)} bytes is no whole {datatype}") from exc
    if sys.byteorder == "big":  # pragma: no cover (the protocol's tensors are little-endian)
        values.byteswap()
    return values


def _ultralytics(config: Any) -> dict[str, Any]:
    """A ``ModelConfig``'s ``parameters.metadata`` (a Python literal, as Ultralytics writes it
    for Triton: task, imgsz, names...); empty when it has none or it cannot be read."""
    entry = config.parameters.get("metadata")
    if entry is None:
        return {}
    try:
        meta = ast.literal_eval(entry.string_value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def class_names(config: Any) -> dict[int, str]:
    """The class names in a ``ModelConfig``'s ``parameters.metadata``; empty when it has none."""
    try:
        return {int(k): str(v) for k, v in dict(_ultralytics(config).get("names", {})).items()}
    except (ValueError, TypeError):
        return {}


# what the service adds to ModelConfig.parameters for /v1/model (service/api/grpc/repository.py)
_INFO_PARAMETERS = ("version", "backend", "device", "precision", "letterbox")


def model_info(config: Any) -> ModelInfo:
    """``/v1/model``'s answer from a model's ``ModelConfig``: Triton's fields, Ultralytics'
    ``metadata`` and the service's own ``parameters``."""
    params = {key: value.string_value for key, value in config.parameters.items()}
    missing = [key for key in _INFO_PARAMETERS if key not in params]
    if missing:
        raise ProtocolError(f"the ModelConfig of {config.name!r} lacks parameters {missing}: "
                            "not a yoloserve service?")
    meta = _ultralytics(config)
    imgsz = meta.get("imgsz")
    try:
        evaluation = params.get("evaluation")
        return ModelInfo(
            name=config.name, input_size=imgsz[0] if isinstance(imgsz, list | tuple) else imgsz,
            task=meta.get("task", "detect"),
            classes={str(k): v for k, v in class_names(config).items()},
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.dynamic_batching.max_queue_delay_microseconds / 1000,
            evaluation=None if evaluation is None else ModelEvaluation.model_validate_json(
                evaluation),
            **{key: params[key] for key in _INFO_PARAMETERS})
    except ValidationError as exc:
        raise ProtocolError(f"the ModelConfig of {config.name!r} is not a model's: {exc}") from exc


def served_names(index: Any) -> list[str]:
    """The models of a ``RepositoryIndexResponse`` as ``/v1/models`` lists them: without the
    raw networks (``NAME-raw`` beside ``NAME``), in the index's order (the default first)."""
    names = [entry.name for entry in index.models]
    listed = set(names)
    return [n for n in names if not (n.endswith(RAW_SUFFIX) and n[: -len(RAW_SUFFIX)] in listed)]


def models_response(configs: Sequence[Any]) -> ModelsResponse:
    """``/v1/models``'s answer from the ``ModelConfig`` of each model the index lists: the
    default is the one whose ``parameters.default`` is ``"true"``, each alias is gathered from
    the ``parameters.aliases`` of the models it sends requests to."""
    if not configs:
        raise ProtocolError("the service lists no models")
    aliases: dict[str, dict[str, float]] = {}
    default = configs[0].name
    for config in configs:
        params = config.parameters
        if "default" in params and params["default"].string_value == "true":
            default = config.name
        if "aliases" in params:
            try:
                routed = dict(orjson.loads(params["aliases"].string_value))
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                raise ProtocolError(f"the aliases of {config.name!r} are not JSON") from exc
            for alias, weight in routed.items():
                aliases.setdefault(alias, {})[config.name] = weight
    try:
        return ModelsResponse(models=[model_info(c) for c in configs], default=default,
                              aliases=aliases)
    except ValidationError as exc:
        raise ProtocolError(f"the models' configurations are not a listing: {exc}") from exc


def metadata(tensors: Tensors, call: Call, count: int) -> ProcessingMetadata:
    """What ``/v1`` says of how it answered, as far as the protocol tells: the thresholds asked
    for (else the defaults), the images of the call as its batch, the call's time as its total."""
    return ProcessingMetadata(
        model_name=tensors.model, model_version=tensors.version,
        confidence_threshold=call.conf if call.conf is not None else CONF.default,
        iou_threshold=call.iou if call.iou is not None else IOU.default, batch_size=count,
        timestamp=datetime.now(UTC), timings_ms=Timings(total=round(call.elapsed_ms, 3)))


def _name(names: dict[int, str], class_id: int) -> str:
    return names.get(class_id, str(class_id))


def detection_results(tensors: Tensors, call: Call) -> list[DetectionResult]:
    """One ``DetectionResult`` per image of the call, as ``/v1/detect`` renders it."""
    if tensors.has("probabilities"):
        raise InvalidRequest(f"model {tensors.model!r} is a classifier: use classify()",
                             code="wrong_task", status=400)
    count = len(call.names)
    max_det = tensors.get("scores")[0][1]  # [images, max_det]: padded to max_det per image
    found = tensors.get("num_detections")[1]
    if len(found) != count:
        raise ProtocolError(f"{count} images sent, {len(found)} answered")
    meta = metadata(tensors, call, count)
    results = []
    for i in range(count):
        width, height = call.sizes[i]
        dets = [_detection(tensors, call, i * max_det + j, width, height)
                for j in range(int(found[i]))]
        results.append(DetectionResult(
            image_name=call.names[i], image_dimensions=ImageDimensions(width=width, height=height),
            detections=dets, detection_count=len(dets), processing_metadata=meta))
    return results


def _detection(t: Tensors, call: Call, at: int, width: int, height: int) -> Detection:
    """Detection number ``at`` (image × max_det + index), rounded as the service rounds it."""
    x0, y0, x1, y1 = t.get("boxes")[1][4 * at: 4 * at + 4]
    class_id = int(t.get("classes")[1][at])
    return Detection(
        class_name=_name(call.class_names, class_id), class_id=class_id,
        confidence=round(t.get("scores")[1][at], 6), **box_fields(x0, y0, x1, y1, width, height),
        **_task_fields(t, call, at))


def _task_fields(t: Tensors, call: Call, at: int) -> dict[str, Any]:
    if t.has("masks"):
        if call.mask_format == "none":
            return {}
        rle = orjson.loads(t.get("masks")[1][at])
        return {"mask": MaskRLE(size=rle["size"], counts=rle["counts"])}
    if t.has("keypoints"):
        shape, values = t.get("keypoints")
        k, d = shape[2], shape[3]
        flat = values[at * k * d: (at + 1) * k * d]
        points = [[round(v, 6) for v in flat[p * d: p * d + 3]] for p in range(k)]
        return {"keypoints": [Keypoint(x=round(x, 3), y=round(y, 3), confidence=c)
                              for x, y, c in points]}
    if t.has("rotated_boxes"):
        cx, cy, w, h, a = t.get("rotated_boxes")[1][5 * at: 5 * at + 5]
        return {"rotated_box": RotatedBox(x_center=round(cx, 3), y_center=round(cy, 3),
                                          width=round(w, 3), height=round(h, 3), angle=round(a, 6)),
                "polygon": [[round(x, 3), round(y, 3)] for x, y in _corners(cx, cy, w, h, a)]}
    return {}


def _f32(value: float) -> float:
    """``value`` at single precision, as the service computes the corners."""
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _corners(cx: float, cy: float, w: float, h: float, a: float) -> Iterator[tuple[float, float]]:
    """The four corners of an xywhr box, in Ultralytics' order (``ops.xywhr2xyxyxyxy``)."""
    cos, sin = _f32(math.cos(a)), _f32(math.sin(a))
    w2, h2 = _f32(w / 2), _f32(h / 2)
    v1 = (_f32(w2 * cos), _f32(w2 * sin))
    v2 = (_f32(-h2 * sin), _f32(h2 * cos))
    for s1, s2 in ((1, 1), (1, -1), (-1, -1), (-1, 1)):
        yield (_f32(_f32(cx + s1 * v1[0]) + s2 * v2[0]), _f32(_f32(cy + s1 * v1[1]) + s2 * v2[1]))


def classification(tensors: Tensors, call: Call, top: int = 5) -> ClassificationResult:
    """A classifier's answer for the call's one image, as ``/v1/classify`` renders it."""
    if not tensors.has("probabilities"):
        raise InvalidRequest(f"model {tensors.model!r} is not a classifier: use detect()",
                             code="wrong_task", status=400)
    probs = tensors.get("probabilities")[1]
    order = sorted(range(len(probs)), key=lambda c: -probs[c])[:top]  # stable, as np.argsort's
    width, height = call.sizes[0]
    return ClassificationResult(
        image_name=call.names[0], image_dimensions=ImageDimensions(width=width, height=height),
        top=[ClassScore(class_id=c, class_name=_name(call.class_names, c),
                        confidence=round(probs[c], 6)) for c in order],
        processing_metadata=metadata(tensors, call, 1))

"""The response bodies: the contract's ``DetectionResult``, the error envelope and the rest.

Pure pydantic. The service's OpenAPI schema is generated from them, and the client parses answers
into them.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "STREAM_ID_PATTERN",
    "BatchItemError",
    "BatchResponse",
    "Box2D",
    "ClassScore",
    "ClassesResponse",
    "ClassificationResult",
    "Detection",
    "DetectionResult",
    "ErrorBody",
    "ErrorDetail",
    "HealthResponse",
    "ImageDimensions",
    "Keypoint",
    "MaskPolygons",
    "MaskRLE",
    "ModelInfo",
    "ModelsResponse",
    "NormalizedBox",
    "ProcessingMetadata",
    "RotatedBox",
    "StreamInfo",
    "StreamList",
    "StreamResult",
    "StreamSummary",
    "Timings",
    "TrackedDetection",
    "box_fields",
    "valid_stream_id",
]

STREAM_ID_PATTERN: Final = r"^[A-Za-z0-9._-]{1,128}$"
"""A video stream's id: 1-128 characters of letters, digits, ``.``, ``_`` and ``-``."""
_STREAM_ID = re.compile(STREAM_ID_PATTERN)


def valid_stream_id(value: str) -> bool:
    return _STREAM_ID.fullmatch(value) is not None


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=False)


class ImageDimensions(_Model):
    width: int = Field(description="Width of the original image in pixels (EXIF orientation applied).")
    height: int = Field(description="Height of the original image in pixels.")


class Box2D(_Model):
    x_min: float
    y_min: float
    x_max: float
    y_max: float


class NormalizedBox(_Model):
    x_center: float
    y_center: float
    width: float
    height: float


class MaskPolygons(_Model):
    polygons: list[list[list[float]]] = Field(
        description="The mask's outline(s), each a list of [x, y] in original-image pixels "
                    "(as Ultralytics' masks.xy).")


class MaskRLE(_Model):
    size: list[int] = Field(description="[height, width] of the original image.")
    counts: str = Field(description="COCO's compressed run-length encoding (column-major).")


class Keypoint(_Model):
    x: float
    y: float
    confidence: float


class RotatedBox(_Model):
    x_center: float
    y_center: float
    width: float
    height: float
    angle: float = Field(description="Radians, as Ultralytics' xywhr.")


def box_fields(x0: float, y0: float, x1: float, y1: float, width: int, height: int
               ) -> dict[str, Any]:
    """A detection's ``box_2d`` (pixels, 3 decimals), ``normalized_box`` (6) and ``box_area``
    from its corners in an image of ``width`` × ``height``: the service's rounding, which the
    gRPC client rebuilds the same way."""
    w, h = x1 - x0, y1 - y0
    return {
        "box_2d": Box2D(x_min=round(x0, 3), y_min=round(y0, 3), x_max=round(x1, 3),
                        y_max=round(y1, 3)),
        "normalized_box": NormalizedBox(
            x_center=round((x0 + x1) / 2 / width, 6), y_center=round((y0 + y1) / 2 / height, 6),
            width=round(w / width, 6), height=round(h / height, 6)),
        "box_area": round(w * h, 3),
    }


def _absent(value: object) -> bool:
    """A task's field is left out of the JSON for the tasks that do not have it."""
    return value is None


class Detection(_Model):
    class_name: str
    class_id: int
    confidence: float = Field(ge=0.0, le=1.0)
    box_2d: Box2D = Field(description="Box in pixels of the original image (for an oriented box: "
                                      "the axis-aligned bound of its corners).")
    normalized_box: NormalizedBox = Field(description="Box centre and size as fractions of the image.")
    box_area: float = Field(description="Area of box_2d in square pixels.")
    mask: MaskPolygons | MaskRLE | None = Field(
        None, exclude_if=_absent,
        description="segment models: the object's pixels (absent for other tasks, and with "
                    "mask_format=none).")
    keypoints: list[Keypoint] | None = Field(
        None, exclude_if=_absent,
        description="pose models: the keypoints in the model's order (absent otherwise).")
    rotated_box: RotatedBox | None = Field(
        None, exclude_if=_absent, description="obb models: the oriented box (absent otherwise).")
    polygon: list[list[float]] | None = Field(
        None, exclude_if=_absent,
        description="obb models: the oriented box's four corners, [x, y] (absent otherwise).")


class Timings(_Model):
    queue: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    total: float = 0.0


class ProcessingMetadata(_Model):
    model_name: str | None = Field(default=None, description="The model that answered.")
    model_version: str
    confidence_threshold: float
    iou_threshold: float
    batch_size: int = Field(description="Number of images in the forward pass that computed this one.")
    timestamp: datetime
    timings_ms: Timings = Field(default_factory=Timings)
    cached: bool = Field(default=False, description="True when served from the result cache.")


class DetectionResult(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "image_name": "shapes.jpg",
                "image_dimensions": {"width": 640, "height": 480},
                "detections": [
                    {
                        "class_name": "circle", "class_id": 0, "confidence": 0.91,
                        "box_2d": {"x_min": 12.0, "y_min": 40.5, "x_max": 100.2, "y_max": 130.0},
                        "normalized_box": {"x_center": 0.088, "y_center": 0.177,
                                           "width": 0.138, "height": 0.186},
                        "box_area": 7893.9,
                    }
                ],
                "detection_count": 1,
                "processing_metadata": {
                    "model_name": "demo", "model_version": "3f2a9c0d1e4b", "confidence_threshold": 0.25,
                    "iou_threshold": 0.7, "batch_size": 6, "timestamp": "2026-11-23T15:00:00Z",
                    "timings_ms": {"queue": 3.1, "preprocess": 2.0, "inference": 21.5,
                                   "postprocess": 0.8, "total": 28.0},
                    "cached": False,
                },
            }
        }
    )

    image_name: str
    image_dimensions: ImageDimensions
    detections: list[Detection]
    detection_count: int
    processing_metadata: ProcessingMetadata


class ClassScore(_Model):
    class_id: int
    class_name: str
    confidence: float = Field(ge=0.0, le=1.0)


class ClassificationResult(_Model):
    """A classifier's answer for one image: its five most likely classes, most likely first."""

    image_name: str
    image_dimensions: ImageDimensions
    top: list[ClassScore] = Field(description="The five most likely classes (fewer when the model "
                                              "has fewer), most likely first.")
    processing_metadata: ProcessingMetadata


class TrackedDetection(Detection):
    track_id: int | None = Field(
        description="The object's track in its stream; null while the track is unconfirmed.")


class StreamInfo(_Model):
    id: str = Field(pattern=STREAM_ID_PATTERN, description="The stream's id.")
    seq: int = Field(description="The frame's number in its stream.")
    stream_started: bool = Field(
        description="True when this frame started the stream (its first frame, or the first one "
                    "after the stream expired or was deleted, or after its process restarted with "
                    "no saved state to resume it from).")
    timestamp_ms: float | None = Field(
        None, description="The frame's timestamp_ms as sent (the stream's own clock), if any.")


class StreamResult(DetectionResult):
    """The answer to one frame of a video stream: a ``DetectionResult`` with track ids."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "image_name": "cam-1",
                "image_dimensions": {"width": 640, "height": 480},
                "detections": [
                    {
                        "class_name": "square", "class_id": 1, "confidence": 0.93,
                        "box_2d": {"x_min": 210.4, "y_min": 96.0, "x_max": 301.7, "y_max": 188.2},
                        "normalized_box": {"x_center": 0.4, "y_center": 0.296,
                                           "width": 0.143, "height": 0.192},
                        "box_area": 8417.9, "track_id": 3,
                    }
                ],
                "detection_count": 1,
                "processing_metadata": {
                    "model_version": "3f2a9c0d1e4b", "confidence_threshold": 0.1,
                    "iou_threshold": 0.7, "batch_size": 8, "timestamp": "2026-12-03T02:00:00Z",
                    "timings_ms": {"queue": 4.2, "preprocess": 1.9, "inference": 22.8,
                                   "postprocess": 0.9, "total": 30.1},
                    "cached": False,
                },
                "stream": {"id": "cam-1", "seq": 42, "stream_started": False},
            }
        }
    )

    detections: list[TrackedDetection]  # type: ignore[assignment]
    stream: StreamInfo


class StreamSummary(_Model):
    id: str = Field(description="The stream's id.")
    frames: int = Field(description="Frames processed in this stream.")
    tracks: int = Field(description="Tracks alive (confirmed and not yet lost) in the stream.")
    last_seen: datetime = Field(description="When the stream's last frame was processed.")


class StreamList(_Model):
    streams: list[StreamSummary]


class ErrorDetail(_Model):
    code: str = Field(description="Stable snake_case error code.", examples=["invalid_image"])
    message: str = Field(description="Explanation for people.")
    request_id: str | None = Field(default=None, description="The X-Request-ID of the request.")


class ErrorBody(_Model):
    error: ErrorDetail


class BatchItemError(_Model):
    error: ErrorDetail


class BatchResponse(_Model):
    results: list[DetectionResult | BatchItemError] = Field(
        description="One entry per input image, in input order: a result or that image's error."
    )


class ModelEvaluation(_Model):
    """The model's stored accuracy (``yoloserve evaluate``) at the precision it is served at."""

    precision: str
    map50: float | None = None
    map50_95: float | None = Field(None, description="mAP50-95 at this precision.")
    fp32_map50_95: float | None = Field(None, description="mAP50-95 of the same model at FP32.")
    delta_map50_95: float | None = Field(
        None, description="mAP50-95 at this precision minus FP32's, in points (x100).")
    box_agreement: float | None = Field(
        None, description="Share of FP32's boxes found at this precision (same class, IoU >= 0.9).")
    images: int | None = Field(None, description="Labelled images the evaluation ran on.")
    data: str | None = Field(None, description="The labelled folder's name.")
    cpu: str | None = Field(None, description="The CPU (and its matrix flags) it was measured on.")


class ModelInfo(_Model):
    name: str
    version: str = Field(description="First 12 hex digits of the sha256 of the weights file.")
    backend: str = Field(description="torch, onnx or openvino.")
    device: str
    precision: str = Field(description="fp32, fp16, bf16 or int8: what the forward pass runs at.")
    input_size: int = Field(description="Side of the square letterbox the model reads.")
    task: str = Field("detect", description="detect, segment, pose, obb or classify (Ultralytics' "
                                            "task, from the weights).")
    letterbox: str = Field("square", description="square, or rect: padded to the stride multiple only.")
    classes: dict[str, str]
    max_batch_size: int
    max_wait_ms: float
    evaluation: ModelEvaluation | None = Field(
        None, description="Stored accuracy at this precision and at FP32, when evaluated.")


class ModelsResponse(_Model):
    models: list[ModelInfo] = Field(description="Every model served, the default first.")
    default: str = Field(description="The model that the routes without /models/{name} use.")
    aliases: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="Names that split requests among models, by weight.")


class ClassesResponse(_Model):
    classes: dict[str, str]


class HealthResponse(_Model):
    model_config = ConfigDict(extra="allow")

    status: str = Field(examples=["ready"])
    queue_depth: int | None = None
    inflight_batches: int | None = None

    def extra(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

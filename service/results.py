"""Engine detections to the contract's ``DetectionResult``."""

from __future__ import annotations

from datetime import UTC, datetime

from service.engine.types import Detection as EngineDetection
from service.engine.types import Detections, DetectParams
from wire.schemas import (
    Box2D,
    Detection,
    DetectionResult,
    ImageDimensions,
    NormalizedBox,
    ProcessingMetadata,
    Timings,
)

__all__ = ["to_detection", "to_result"]


def to_detection(d: EngineDetection, width: int, height: int) -> Detection:
    w, h = d.x_max - d.x_min, d.y_max - d.y_min
    return Detection(
        class_name=d.class_name,
        class_id=d.class_id,
        confidence=round(d.confidence, 6),
        box_2d=Box2D(x_min=round(d.x_min, 3), y_min=round(d.y_min, 3),
                     x_max=round(d.x_max, 3), y_max=round(d.y_max, 3)),
        normalized_box=NormalizedBox(
            x_center=round((d.x_min + d.x_max) / 2 / width, 6),
            y_center=round((d.y_min + d.y_max) / 2 / height, 6),
            width=round(w / width, 6), height=round(h / height, 6),
        ),
        box_area=round(w * h, 3),
    )


def to_result(
    dets: Detections, *, name: str, version: str, params: DetectParams, batch_size: int,
    timings: Timings, cached: bool = False,
) -> DetectionResult:
    detections = [to_detection(d, dets.width, dets.height) for d in dets.items]
    return DetectionResult(
        image_name=name,
        image_dimensions=ImageDimensions(width=dets.width, height=dets.height),
        detections=detections,
        detection_count=len(detections),
        processing_metadata=ProcessingMetadata(
            model_version=version, confidence_threshold=params.conf, iou_threshold=params.iou,
            batch_size=batch_size, timestamp=datetime.now(UTC), timings_ms=timings, cached=cached,
        ),
    )

"""Engine detections to the contract's ``DetectionResult``; a stored evaluation to ``ModelEvaluation``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from service.engine.types import Detection as EngineDetection
from service.engine.types import Detections, DetectParams
from wire.schemas import (
    Box2D,
    Detection,
    DetectionResult,
    ImageDimensions,
    ModelEvaluation,
    NormalizedBox,
    ProcessingMetadata,
    Timings,
)

__all__ = ["stored_evaluation", "to_detection", "to_result"]


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
    timings: Timings, cached: bool = False, model: str | None = None,
) -> DetectionResult:
    detections = [to_detection(d, dets.width, dets.height) for d in dets.items]
    return DetectionResult(
        image_name=name,
        image_dimensions=ImageDimensions(width=dets.width, height=dets.height),
        detections=detections,
        detection_count=len(detections),
        processing_metadata=ProcessingMetadata(
            model_name=model, model_version=version, confidence_threshold=params.conf,
            iou_threshold=params.iou,
            batch_size=batch_size, timestamp=datetime.now(UTC), timings_ms=timings, cached=cached,
        ),
    )


def stored_evaluation(source: Path | None, precision: str, letterbox: str, backend: str,
                      decode_reduce: bool = False) -> ModelEvaluation | None:
    """The model's stored evaluation at ``precision`` (``yoloserve evaluate``), if there is one."""
    from service.engine.evaluation import entry_for, variant

    entry = None if source is None else entry_for(
        source, precision, variant(letterbox, decode_reduce), backend)
    if entry is None:
        return None
    return ModelEvaluation(
        precision=precision, map50=entry.get("map50"), map50_95=entry.get("map50_95"),
        fp32_map50_95=entry.get("fp32_map50_95"), delta_map50_95=entry.get("delta_map50_95"),
        box_agreement=entry.get("agreement"), images=entry.get("images"), data=entry.get("data"),
        cpu=entry.get("cpu"))

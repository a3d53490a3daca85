"""The JSON of ``/v1`` (and of a stream's frames, which add track ids to it), rendered once from
the runtime's ``Result``: ``DetectionResult``; and a stored evaluation as ``ModelEvaluation``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from service.engine.types import Detections
from service.runtime.result import Result, Timings
from wire.schemas import (
    ClassificationResult,
    ClassScore,
    Detection,
    DetectionResult,
    ImageDimensions,
    Keypoint,
    MaskPolygons,
    MaskRLE,
    ModelEvaluation,
    ProcessingMetadata,
    RotatedBox,
    TrackedDetection,
    box_fields,
)
from wire.schemas import Timings as WireTimings

__all__ = ["classification", "detections", "evaluation", "metadata", "result",
           "tracked_detections"]


def _task_fields(dets: Detections) -> Iterator[dict[str, Any]]:
    """Per detection, what its task adds: a mask, keypoints, an oriented box and its corners."""
    n = len(dets)
    if dets.rles is not None:
        for rle in dets.rles:
            yield {"mask": MaskRLE(size=rle["size"], counts=rle["counts"])}
    elif dets.outlines is not None:
        for outline in dets.outlines:
            points = np.round(outline.astype(np.float64), 3).tolist()
            yield {"mask": MaskPolygons(polygons=[points] if points else [])}
    elif dets.keypoints is not None:
        for kpts in np.round(dets.keypoints.astype(np.float64), 6).tolist():
            yield {"keypoints": [Keypoint(x=round(x, 3), y=round(y, 3), confidence=c)
                                 for x, y, c in kpts]}
    elif dets.rotated is not None and dets.corners is not None:
        corners = np.round(dets.corners.astype(np.float64), 3).tolist()
        for (cx, cy, w, h, a), quad in zip(dets.rotated.astype(np.float64).tolist(), corners,
                                           strict=True):
            yield {"rotated_box": RotatedBox(x_center=round(cx, 3), y_center=round(cy, 3),
                                             width=round(w, 3), height=round(h, 3),
                                             angle=round(a, 6)),
                   "polygon": quad}
    else:
        yield from ({} for _ in range(n))


def _fields(dets: Detections) -> Iterator[dict[str, Any]]:
    """Each box in original-image pixels (3 decimals), normalised (6), with its area, and what
    its task adds."""
    width, height = dets.width, dets.height
    rows = zip(dets.class_ids.tolist(), dets.scores.tolist(), dets.boxes.tolist(),
               _task_fields(dets), strict=True)
    for class_id, score, (x0, y0, x1, y1), extra in rows:
        yield {
            "class_name": dets.class_name(class_id), "class_id": class_id,
            "confidence": round(score, 6), **box_fields(x0, y0, x1, y1, width, height), **extra,
        }


def detections(dets: Detections) -> list[Detection]:
    return [Detection(**fields) for fields in _fields(dets)]


def tracked_detections(dets: Detections, track_ids: Sequence[int | None]) -> list[TrackedDetection]:
    """A stream frame's detections: ``/v1``'s, each with its track's id (None: not tracked)."""
    return [TrackedDetection(**fields, track_id=track_id)
            for fields, track_id in zip(_fields(dets), track_ids, strict=True)]


def _timings(t: Timings) -> WireTimings:
    return WireTimings(queue=round(t.queue, 3), preprocess=round(t.preprocess, 3),
                       inference=round(t.inference, 3), postprocess=round(t.postprocess, 3),
                       total=round(t.total, 3))


def metadata(r: Result) -> ProcessingMetadata:
    return ProcessingMetadata(
        model_name=r.model, model_version=r.version, confidence_threshold=r.params.conf,
        iou_threshold=r.params.iou, batch_size=r.batch_size, timestamp=datetime.now(UTC),
        timings_ms=_timings(r.timings), cached=r.cached)


def result(r: Result) -> DetectionResult:
    found = detections(r.detections)
    return DetectionResult(
        image_name=r.name,
        image_dimensions=ImageDimensions(width=r.detections.width, height=r.detections.height),
        detections=found, detection_count=len(found), processing_metadata=metadata(r))


def classification(r: Result, top: int = 5) -> ClassificationResult:
    """A classifier's answer: its ``top`` most likely classes, most likely first."""
    probs = r.detections.probs
    assert probs is not None  # a classifier's result
    order = np.argsort(-probs, kind="stable")[:top].tolist()
    return ClassificationResult(
        image_name=r.name,
        image_dimensions=ImageDimensions(width=r.detections.width, height=r.detections.height),
        top=[ClassScore(class_id=c, class_name=r.detections.class_name(c),
                        confidence=round(float(probs[c]), 6)) for c in order],
        processing_metadata=metadata(r))


def evaluation(precision: str, entry: dict[str, Any] | None) -> ModelEvaluation | None:
    """A model's stored evaluation (``yoloserve evaluate``) at ``precision``, if there is one."""
    if entry is None:
        return None
    return ModelEvaluation(
        precision=precision, map50=entry.get("map50"), map50_95=entry.get("map50_95"),
        fp32_map50_95=entry.get("fp32_map50_95"), delta_map50_95=entry.get("delta_map50_95"),
        box_agreement=entry.get("agreement"), images=entry.get("images"), data=entry.get("data"),
        cpu=entry.get("cpu"))

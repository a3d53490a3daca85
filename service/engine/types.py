"""Plain data that flows through the engine: decoded images, letterboxed inputs, parameters, boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["DetectParams", "Detection", "Detections", "Letterbox", "ModelMeta", "Prepared"]


@dataclass(frozen=True)
class DetectParams:
    """Per-image thresholds; images with different parameters share one forward pass."""

    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300
    classes: frozenset[int] | None = None
    agnostic: bool = False
    mask_format: str = "polygons"  # a segmenter's masks: polygons, rle or none


@dataclass(frozen=True)
class Letterbox:
    """How an original image was placed in the square model input (Ultralytics' LetterBox)."""

    width: int  # original image, pixels
    height: int
    gain_x: float  # resized / original, per axis (each side is rounded)
    gain_y: float
    pad_x: int  # left padding
    pad_y: int  # top padding


@dataclass(frozen=True)
class Prepared:
    """One image ready to be stacked: ``tensor`` is the letterboxed BGR uint8 HWC canvas."""

    tensor: NDArray[np.uint8]
    letterbox: Letterbox
    name: str = "image"
    preprocess_ms: float = 0.0


@dataclass(frozen=True)
class Detection:
    class_id: int
    class_name: str
    confidence: float
    x_min: float
    y_min: float
    x_max: float
    y_max: float


def _no_boxes() -> NDArray[np.float32]:
    return np.zeros((0, 4), np.float32)


def _no_scores() -> NDArray[np.float32]:
    return np.zeros((0,), np.float32)


def _no_classes() -> NDArray[np.int64]:
    return np.zeros((0,), np.int64)


@dataclass(frozen=True, eq=False)
class Detections:
    """Boxes for one image, in pixels of the original image, sorted by confidence, as the model
    gave them: full-precision arrays (``boxes`` ``(n, 4)`` xyxy, ``scores`` ``(n,)``,
    ``class_ids`` ``(n,)``) and the model's class names. Each protocol renders these its own way;
    ``items`` is the same as one object per box."""

    width: int
    height: int
    boxes: NDArray[np.floating[Any]] = field(default_factory=_no_boxes)  # float32; float64 tracked
    scores: NDArray[np.float32] = field(default_factory=_no_scores)
    class_ids: NDArray[np.int64] = field(default_factory=_no_classes)
    names: Mapping[int, str] = field(default_factory=dict)
    # what other tasks add, one entry per detection (None: not this task)
    outlines: list[NDArray[np.float32]] | None = None  # segment: (m, 2) polygon, original pixels
    rles: list[dict[str, Any]] | None = None  # segment with mask_format=rle: COCO RLE
    keypoints: NDArray[np.float32] | None = None  # pose: (n, k, 3) x, y, confidence
    rotated: NDArray[np.float32] | None = None  # obb: (n, 5) x_center, y_center, w, h, angle
    corners: NDArray[np.float32] | None = None  # obb: (n, 4, 2) the rotated boxes' corners
    probs: NDArray[np.float32] | None = None  # classify: (nc,) probabilities; no boxes

    @classmethod
    def from_items(cls, width: int, height: int, items: Sequence[Detection]) -> Detections:
        return cls(
            width, height,
            np.array([(d.x_min, d.y_min, d.x_max, d.y_max) for d in items], np.float32).reshape(-1, 4),
            np.array([d.confidence for d in items], np.float32),
            np.array([d.class_id for d in items], np.int64),
            {d.class_id: d.class_name for d in items})

    def __len__(self) -> int:
        return len(self.scores)

    def class_name(self, class_id: int) -> str:
        return self.names.get(class_id, str(class_id))

    @property
    def class_names(self) -> list[str]:
        return [self.class_name(c) for c in self.class_ids.tolist()]

    @property
    def items(self) -> list[Detection]:
        rows = zip(self.class_ids.tolist(), self.scores.tolist(), self.boxes.tolist(), strict=True)
        return [Detection(c, self.class_name(c), s, *box) for c, s, box in rows]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Detections):
            return NotImplemented
        return (self.width, self.height) == (other.width, other.height) and \
            self.items == other.items


@dataclass(frozen=True)
class ModelMeta:
    name: str
    version: str
    backend: str
    device: str
    precision: str
    input_size: int
    classes: dict[int, str]
    path: Path | None = None  # the file the backend runs (an ONNX sibling, an IR)
    source: Path | None = None  # the model file as named by the user
    letterbox: str = "square"  # or "rect": padded to the stride multiple only
    stride: int = 32
    task: str = "detect"  # Ultralytics' task: detect, segment, pose, obb or classify
    kpt_shape: tuple[int, int] | None = None  # pose: keypoints per object, values per keypoint

"""Plain data that flows through the engine: decoded images, letterboxed inputs, parameters, boxes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass(frozen=True)
class Detections:
    """Boxes for one image, in pixels of the original image, sorted by confidence."""

    width: int
    height: int
    items: list[Detection] = field(default_factory=list)


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

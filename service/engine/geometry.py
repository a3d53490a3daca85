"""Oriented boxes' corners and axis-aligned bounds, in one place: the engine's ``obb`` answers
and a stream's tracked oriented boxes both take them from here."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["rotated_corners"]


def rotated_corners(xywhr: NDArray[np.floating[Any]]
                    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The corners ``(n, 4, 2)`` of rotated boxes ``(n, 5)`` (x_center, y_center, width, height,
    angle in radians) and their axis-aligned bounds ``(n, 4)`` (x1, y1, x2, y2), in float32 as
    Ultralytics' ``OBB.xyxyxyxy`` and ``OBB.xyxy`` give them."""
    from ultralytics.utils import ops

    boxes = np.asarray(xywhr, np.float32).reshape(-1, 5)
    corners: NDArray[np.float32] = ops.xywhr2xyxyxyxy(boxes).astype(np.float32)  # type: ignore[no-untyped-call]
    bounds = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    return corners, bounds

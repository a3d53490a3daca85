"""Drawing boxes and labels on an image, for ``POST /v1/annotate``."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from service.engine.types import Detections

__all__ = ["draw"]

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
            (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
            (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0)]


def draw(img: NDArray[np.uint8], dets: Detections, quality: int = 90) -> bytes:
    """JPEG bytes of ``img`` (BGR) with every detection's box and label drawn on it."""
    canvas = img.copy()
    thickness = max(1, round(sum(canvas.shape[:2]) / 2 * 0.003))
    scale = max(0.4, thickness / 3)
    for det in dets.items:
        colour = _PALETTE[det.class_id % len(_PALETTE)]
        p1, p2 = (int(det.x_min), int(det.y_min)), (int(det.x_max), int(det.y_max))
        cv2.rectangle(canvas, p1, p2, colour, thickness, cv2.LINE_AA)
        label = f"{det.class_name} {det.confidence:.2f}"
        (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(p1[1] - h - base, 0)
        cv2.rectangle(canvas, (p1[0], top), (p1[0] + w, top + h + base), colour, -1)
        cv2.putText(canvas, label, (p1[0], top + h), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf)

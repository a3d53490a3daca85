"""Drawing on an image for ``POST /v1/annotate``: boxes and labels; a segmenter's masks, a pose
model's keypoints with their skeleton, an oriented-box model's rotated boxes."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from service.engine.types import Detections

__all__ = ["draw"]

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
            (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
            (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0)]


# Ultralytics' COCO keypoint skeleton (17 points), 1-based as it writes it
_COCO_SKELETON = [(16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7),
                  (6, 8), (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6),
                  (5, 7)]


def skeleton(points: int) -> list[tuple[int, int]]:
    """Which keypoints are joined: COCO's for 17 of them, else each to the next, in a ring."""
    if points == 17:
        return [(a - 1, b - 1) for a, b in _COCO_SKELETON]
    return [(i, (i + 1) % points) for i in range(points)] if points > 2 else []


def _masks(canvas: NDArray[np.uint8], dets: Detections) -> None:
    """Each mask filled at half opacity in its class's colour."""
    if not dets.outlines:
        return
    layer = canvas.copy()
    for outline, class_id in zip(dets.outlines, dets.class_ids.tolist(), strict=True):
        if len(outline) >= 3:
            cv2.fillPoly(layer, [np.round(outline).astype(np.int32)], _PALETTE[class_id % len(_PALETTE)])
    cv2.addWeighted(layer, 0.5, canvas, 0.5, 0, dst=canvas)


def _keypoints(canvas: NDArray[np.uint8], kpts: NDArray[np.float32], colour: tuple[int, int, int],
               radius: int) -> None:
    visible = kpts[:, 2] >= 0.5
    for a, b in skeleton(len(kpts)):
        if visible[a] and visible[b]:
            cv2.line(canvas, (int(kpts[a, 0]), int(kpts[a, 1])), (int(kpts[b, 0]), int(kpts[b, 1])),
                     colour, max(1, radius // 2), cv2.LINE_AA)
    for x, y, _ in kpts[visible]:
        cv2.circle(canvas, (int(x), int(y)), radius, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(canvas, (int(x), int(y)), radius, colour, 1, cv2.LINE_AA)


def draw(img: NDArray[np.uint8], dets: Detections, quality: int = 90) -> bytes:
    """JPEG bytes of ``img`` (BGR) with every detection drawn on it: its box (rotated for an
    oriented-box model), mask, keypoints and label."""
    canvas = img.copy()
    thickness = max(1, round(sum(canvas.shape[:2]) / 2 * 0.003))
    scale = max(0.4, thickness / 3)
    _masks(canvas, dets)
    for i, det in enumerate(dets.items):
        colour = _PALETTE[det.class_id % len(_PALETTE)]
        p1, p2 = (int(det.x_min), int(det.y_min)), (int(det.x_max), int(det.y_max))
        if dets.corners is not None:
            cv2.polylines(canvas, [np.round(dets.corners[i]).astype(np.int32)], True, colour,
                          thickness, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, p1, p2, colour, thickness, cv2.LINE_AA)
        if dets.keypoints is not None:
            _keypoints(canvas, dets.keypoints[i], colour, thickness + 2)
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

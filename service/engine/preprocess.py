"""Letterboxing exactly as Ultralytics' ``LetterBox(auto=False)``: same rounding, interpolation, padding."""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from service.engine.types import Letterbox

__all__ = ["PAD_VALUE", "letterbox"]

PAD_VALUE = 114


def letterbox(img: NDArray[np.uint8], size: int) -> tuple[NDArray[np.uint8], Letterbox]:
    """Resize ``img`` (BGR, HxWx3) to fit a ``size`` square, keeping its aspect, padded with grey."""
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (size - new_w) / 2, (size - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    if (w, h) != (new_w, new_h):
        img = np.asarray(cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR), np.uint8)
    canvas = cv2.copyMakeBorder(
        img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    info = Letterbox(
        width=w, height=h, gain_x=new_w / w, gain_y=new_h / h, pad_x=left, pad_y=top
    )
    return np.ascontiguousarray(canvas), info

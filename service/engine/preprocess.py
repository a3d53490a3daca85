"""Letterboxing exactly as Ultralytics' ``LetterBox``: same rounding, interpolation, padding.

Square (``auto=False``, ``predict(rect=False)``): every image fills the model's input square.
Rect (``auto=True``, ``predict(rect=True)``): padded only to the next multiple of the stride, so a
4:3 frame is a quarter fewer pixels than the square.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

from service.engine.types import Letterbox

__all__ = ["PAD_VALUE", "classify_crop", "letterbox"]

PAD_VALUE = 114


def letterbox(
    img: NDArray[np.uint8], size: int, stride: int | None = None,
    original: tuple[int, int] | None = None,
) -> tuple[NDArray[np.uint8], Letterbox]:
    """Resize ``img`` (BGR, HxWx3) to fit a ``size`` square, keeping its aspect, padded with grey:
    to the square, or with ``stride`` only to the stride multiple. ``original`` (width, height) is
    the image's full size when ``img`` was decoded at a reduced scale: the geometry is that of the
    original, so the boxes scale back to its pixels."""
    w, h = original or (img.shape[1], img.shape[0])
    r = min(size / h, size / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = float(size - new_w), float(size - new_h)
    if stride:
        dw, dh = float(np.mod(dw, stride)), float(np.mod(dh, stride))
    dw, dh = dw / 2, dh / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    if (img.shape[1], img.shape[0]) != (new_w, new_h):
        img = np.asarray(cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR), np.uint8)
    canvas = cv2.copyMakeBorder(
        img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    info = Letterbox(
        width=w, height=h, gain_x=new_w / w, gain_y=new_h / h, pad_x=left, pad_y=top
    )
    return np.ascontiguousarray(canvas), info


def classify_crop(img: NDArray[np.uint8], size: int) -> tuple[NDArray[np.uint8], Letterbox]:
    """A classifier's input as Ultralytics' ``classify_transforms``: the shorter side resized to
    ``size`` (PIL, bilinear, through torchvision's ``Resize``), then the centre ``size`` square.
    The channels keep their order (BGR in, BGR out), as in its predictor's host transforms."""
    import torchvision.transforms as T
    from PIL import Image

    h, w = img.shape[:2]
    crop = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR),
                      T.CenterCrop(size)])(Image.fromarray(img))
    r = size / min(w, h)
    return np.ascontiguousarray(np.asarray(crop, np.uint8)), Letterbox(w, h, r, r, 0, 0)

"""Generated test images: synthetic shapes at many sizes, and Ultralytics' bundled photos."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from service.demo.synthetic import make_sample

# 56 sizes from 32 px to 4000 px: square, wide, tall, odd
SIZES: list[tuple[int, int]] = [
    (32, 32), (33, 47), (64, 32), (32, 200), (100, 100), (150, 97), (240, 320), (320, 240),
    (319, 321), (333, 500), (480, 640), (640, 480), (500, 333), (640, 640), (701, 405),
    (800, 600), (1000, 250), (250, 1000), (1024, 768), (1280, 720), (720, 1280), (1333, 999),
    (1500, 1500), (1920, 1080), (2000, 500), (500, 2000), (2500, 1700), (3000, 2000),
    (4000, 3000), (3000, 4000), (4000, 4000), (4000, 64), (64, 4000), (123, 456), (456, 123),
    (777, 777), (41, 997), (997, 41), (2048, 2048), (300, 301), (1111, 2222), (2222, 1111),
    (96, 96), (160, 120), (120, 160), (3999, 2001), (640, 360), (360, 640), (850, 1100),
    (1100, 850), (57, 89), (89, 57), (2600, 2600), (1600, 900), (900, 1600), (512, 384),
]


def shapes_image(index: int, size: tuple[int, int], seed: int = 7) -> NDArray[np.uint8]:
    """A synthetic image (never seen in training) resized to ``size`` = (width, height)."""
    img = make_sample(seed, index).image
    return np.ascontiguousarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA))


def bundled_photo(name: str) -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets" / name

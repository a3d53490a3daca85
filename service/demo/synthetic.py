"""A deterministic synthetic detection data set of coloured shapes on textured backgrounds.

Every image is a pure function of ``(seed, index)``, so a split is reproducible anywhere and
the held-out split is simply another seed. Labels are YOLO text files (class, centre, size,
normalised), and a ``data.yaml`` ties the splits together for Ultralytics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

__all__ = ["CLASSES", "Sample", "make_sample", "training_images", "write_dataset", "write_split"]

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon")

Image = NDArray[np.uint8]
Box = tuple[int, float, float, float, float]  # class id, x_min, y_min, x_max, y_max (pixels)


@dataclass(frozen=True)
class Sample:
    image: Image
    boxes: list[Box]
    outlines: list[NDArray[np.int32]] = field(default_factory=list)  # each shape's polygon, pixels


def _background(rng: np.random.Generator, height: int, width: int) -> Image:
    kind = rng.integers(0, 5)
    base = rng.integers(0, 256, size=3).astype(np.float32)
    if kind == 0:  # smooth low-frequency noise
        small = rng.normal(0.0, 60.0, size=(rng.integers(2, 8), rng.integers(2, 8), 3))
        img = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
        img = img + base
    elif kind == 1:  # linear gradient between two colours
        other = rng.integers(0, 256, size=3).astype(np.float32)
        t = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
        if rng.random() < 0.5:
            t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        img = np.broadcast_to(base * (1 - t) + other * t, (height, width, 3)).copy()
    elif kind == 2:  # stripes
        period = float(rng.uniform(6, 40))
        angle = float(rng.uniform(0, math.pi))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        img = base + wave[..., None] * rng.uniform(10, 50)
    elif kind == 3:  # random lines and blobs (clutter)
        img = np.empty((height, width, 3), np.float32)
        img[:] = base
        for _ in range(int(rng.integers(5, 25))):
            colour = tuple(float(c) for c in rng.integers(0, 256, size=3))
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            p2 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)))
    else:  # flat colour
        img = np.empty((height, width, 3), np.float32)
        img[:] = base
    img = img + rng.normal(0.0, rng.uniform(0, 25), size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(cls: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Unit-scale outline of a class around the origin, before rotation and stretch."""
    if cls == 0:
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if cls == 1:
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if cls == 2:
        t = np.array([-90, 30, 150]) * math.pi / 180
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if cls == 3:
        t = np.linspace(0, 2 * math.pi, 10, endpoint=False) - math.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([np.cos(t) * r, np.sin(t) * r], axis=1)
    t = np.linspace(0, 2 * math.pi, 6, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _place(
    cls: int, rng: np.random.Generator, height: int, width: int
) -> NDArray[np.int32]:
    side = min(height, width)
    size = rng.uniform(0.05, 0.35) * side
    stretch = rng.uniform(0.8, 1.25)
    pts = _polygon(cls, rng) * np.array([size * stretch, size / stretch]) / 2
    if cls != 0 or rng.random() < 0.5:
        a = rng.uniform(0, 2 * math.pi)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = pts @ rot.T
    half = np.abs(pts).max(axis=0)
    if rng.random() < 0.85 and (half * 2 < [width, height]).all():  # whole shape in view
        low, high = half, np.array([width, height]) - half
    else:  # cut by the border
        low, high = np.zeros(2), np.array([width, height], dtype=np.float64)
    centre = rng.uniform(low, high)
    out: NDArray[np.int32] = np.round(pts + centre).astype(np.int32)
    return out


def _contrasting(rng: np.random.Generator, background: NDArray[np.float64]) -> tuple[int, ...]:
    """A random colour far enough from the background's mean to be seen."""
    colour = rng.integers(0, 256, size=3)
    for _ in range(20):
        if np.linalg.norm(colour - background) > 90:
            break
        colour = rng.integers(0, 256, size=3)
    return tuple(int(c) for c in colour)


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Fraction of box ``a`` covered by box ``b``."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = max(1e-6, (a[2] - a[0]) * (a[3] - a[1]))
    return iw * ih / area


def make_sample(seed: int, index: int, only: int | None = None, shapes: int | None = None
                ) -> Sample:
    """Image ``index`` of the split with ``seed``: varied size, background and 1-8 shapes (every
    one of class ``only`` when given; ``shapes`` of them when given)."""
    rng = np.random.default_rng([seed, index])
    width, height = (int(v) for v in rng.integers(192, 720, size=2))
    img = _background(rng, height, width)
    boxes: list[Box] = []
    outlines: list[NDArray[np.int32]] = []
    count = int(rng.integers(1, 9))
    for _ in range(count if shapes is None else shapes):
        cls = int(rng.integers(0, len(CLASSES)))
        cls = cls if only is None else only
        for _attempt in range(10):
            pts = _place(cls, rng, height, width)
            x0, y0 = np.clip(pts.min(axis=0), 0, [width - 1, height - 1])
            x1, y1 = np.clip(pts.max(axis=0), 0, [width - 1, height - 1])
            box = (float(x0), float(y0), float(x1) + 1, float(y1) + 1)
            if box[2] - box[0] < 8 or box[3] - box[1] < 8:
                continue
            # a new shape may overlap others, but never hide more than 40% of one
            if all(_overlap(b[1:], box) < 0.4 and _overlap(box, b[1:]) < 0.6 for b in boxes):
                break
        else:
            continue
        x0i, y0i, x1i, y1i = (int(v) for v in box)
        colour = _contrasting(rng, img[y0i:y1i, x0i:x1i].reshape(-1, 3).mean(axis=0))
        cv2.fillPoly(img, [pts], colour, lineType=cv2.LINE_AA)
        if rng.random() < 0.4:
            edge = tuple(int(c) for c in rng.integers(0, 256, size=3))
            cv2.polylines(img, [pts], True, edge, int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
        boxes.append((cls, *box))
        outlines.append(pts)
    if rng.random() < 0.3:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.5))), np.uint8)
    return Sample(image=img, boxes=boxes, outlines=outlines)


def _label_lines(sample: Sample) -> list[str]:
    h, w = sample.image.shape[:2]
    lines = []
    for cls, x0, y0, x1, y1 in sample.boxes:
        cx, cy, bw, bh = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    return lines


def write_split(root: Path, split: str, seed: int, count: int,
                labels: Callable[[Sample], list[str]] | None = None) -> Path:
    """Write ``count`` images and labels under ``root/images/split`` and ``root/labels/split``
    (YOLO box labels, or the lines ``labels`` gives for another task)."""
    label_lines = labels or _label_lines
    images, label_dir = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        sample = make_sample(seed, i)
        cv2.imwrite(str(images / f"{i:05d}.jpg"), sample.image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        (label_dir / f"{i:05d}.txt").write_text("\n".join(label_lines(sample)) + "\n")
    return images


def write_dataset(
    root: Path, *, train: int, val: int, train_seed: int = 0, val_seed: int = 1,
    classes: Sequence[str] = CLASSES,
) -> Path:
    """Generate train and held-out val splits and return the ``data.yaml`` describing them."""
    write_split(root, "train", train_seed, train)
    write_split(root, "val", val_seed, val)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(classes))
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n")
    return data


def training_images(count: int) -> Iterator[np.ndarray]:
    """The first ``count`` images of the demo's training split (seed 0, the distribution the demo
    model learnt), BGR: what INT8 calibrates on when no folder is given."""
    for i in range(count):
        yield make_sample(0, i).image

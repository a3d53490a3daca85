"""The synthetic shapes as a data set for each Ultralytics task, in Ultralytics' own label formats.

- ``segment``: each shape's outline as a polygon (``class x1 y1 x2 y2 ...``, normalised);
- ``pose``: each shape's box and four keypoints, its extreme points in the image's axes: top,
  right, bottom, left (``class cx cy w h x y v ...``; ``v`` 2 when inside the image, else 0);
- ``obb``: each shape's minimum-area rotated rectangle, its four corners (``class x1 y1 ... x4 y4``);
- ``classify``: one shape per image, cropped around it (its box and a margin of 30 % on every
  side, within the image) so that the shape is what the picture shows, in a folder per class
  (``split/class/n.jpg``).

Images are those of :mod:`service.demo.synthetic` (a pure function of seed and index); the held-out
split is another seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from service.demo.synthetic import CLASSES, Sample, make_sample, write_dataset, write_split

__all__ = ["KEYPOINTS", "Task", "framed", "label_lines", "write_task_dataset"]

Task = Literal["detect", "segment", "pose", "obb", "classify"]

KEYPOINTS: tuple[str, ...] = ("top", "right", "bottom", "left")
_FLIP = (0, 3, 2, 1)  # a horizontal flip swaps right and left


def _norm(points: NDArray[Any], width: int, height: int) -> NDArray[np.float64]:
    return np.clip(points.astype(np.float64) / [width, height], 0.0, 1.0)


def _coords(points: NDArray[Any]) -> str:
    return " ".join(f"{v:.6f}" for v in points.reshape(-1))


def _extremes(outline: NDArray[np.int32]) -> NDArray[np.float64]:
    """The outline's top-, right-, bottom- and left-most points, in that order."""
    pts = outline.astype(np.float64)
    return np.stack([pts[pts[:, 1].argmin()], pts[pts[:, 0].argmax()],
                     pts[pts[:, 1].argmax()], pts[pts[:, 0].argmin()]])


def label_lines(sample: Sample, task: Task) -> list[str]:
    """The YOLO label lines of one image for ``task`` (not ``classify``: its label is its folder)."""
    h, w = sample.image.shape[:2]
    lines = []
    for (cls, x0, y0, x1, y1), outline in zip(sample.boxes, sample.outlines, strict=True):
        box = f"{(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}"
        if task == "detect":
            lines.append(f"{cls} {box}")
        elif task == "segment":
            lines.append(f"{cls} {_coords(_norm(outline, w, h))}")
        elif task == "obb":
            corners = cv2.boxPoints(cv2.minAreaRect(outline.astype(np.float32)))
            lines.append(f"{cls} {_coords(_norm(corners, w, h))}")
        elif task == "pose":
            kpts = []
            for x, y in _extremes(outline):
                inside = 0 <= x < w and 0 <= y < h
                kpts.append(f"{x / w:.6f} {y / h:.6f} 2" if inside else "0.000000 0.000000 0")
            lines.append(f"{cls} {box} {' '.join(kpts)}")
        else:
            raise ValueError(f"no label lines for task {task!r}")
    return lines


def framed(sample: Sample, margin: float = 0.3) -> NDArray[np.uint8]:
    """The sample's image cropped to its first shape's box, ``margin`` of the box's size added on
    every side (within the image): a classifier's picture of that shape."""
    h, w = sample.image.shape[:2]
    if not sample.boxes:
        return sample.image
    _, x0, y0, x1, y1 = sample.boxes[0]
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    left, top = max(0, int(x0 - mx)), max(0, int(y0 - my))
    right, bottom = min(w, int(x1 + mx) + 1), min(h, int(y1 + my) + 1)
    return np.ascontiguousarray(sample.image[top:bottom, left:right])


def _write_split(root: Path, split: str, seed: int, count: int, task: Task) -> None:
    if task == "classify":
        for i in range(count):
            cls = i % len(CLASSES)
            folder = root / split / CLASSES[cls]
            folder.mkdir(parents=True, exist_ok=True)
            sample = make_sample(seed, i, only=cls, shapes=1)
            cv2.imwrite(str(folder / f"{i:05d}.jpg"), framed(sample), [cv2.IMWRITE_JPEG_QUALITY, 90])
        return
    write_split(root, split, seed, count, lambda sample: label_lines(sample, task))


def write_task_dataset(root: Path, task: Task, *, train: int, val: int, train_seed: int = 0,
                       val_seed: int = 1) -> Path:
    """Train and held-out val splits for ``task``: the ``data.yaml`` to train on (the data set's
    folder for ``classify``, as Ultralytics takes it)."""
    if task == "detect":
        return write_dataset(root, train=train, val=val, train_seed=train_seed, val_seed=val_seed)
    _write_split(root, "train", train_seed, train, task)
    _write_split(root, "val", val_seed, val, task)
    if task == "classify":
        return root
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    extra = f"kpt_shape: [{len(KEYPOINTS)}, 3]\nflip_idx: {list(_FLIP)}\n" if task == "pose" else ""
    data = root / "data.yaml"
    data.write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\n{extra}"
                    f"names:\n{names}\n")
    return data

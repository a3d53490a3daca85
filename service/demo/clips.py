"""Deterministic test clips for tracking: shapes of the demo model's classes moving across a textured
background, crossing paths and hiding each other, with the ground truth of every frame.

A clip is a pure function of its seed and size. Objects come in pairs that meet near the middle of
the clip from different directions (the one drawn later passes in front), bouncing off the borders;
every object keeps one identity, class, colour and outline for the whole clip. The shapes, colours
and backgrounds are those of :mod:`service.demo.synthetic`, the data the demo model learnt from.

``identity_switches`` scores tracker output against the truth (switches as MOTChallenge counts them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from service.demo.synthetic import CLASSES, _background, _contrasting, _polygon

__all__ = ["Clip", "TruthBox", "identity_switches", "make_clip", "write_frames", "write_video"]

Image = NDArray[np.uint8]
XYXY = tuple[float, float, float, float]


@dataclass(frozen=True)
class TruthBox:
    """Where one object is in one frame."""

    object_id: int
    class_id: int
    box: XYXY  # pixels, clipped to the frame
    visible: float  # the fraction of the object's pixels not hidden by others or the border

    @property
    def class_name(self) -> str:
        return CLASSES[self.class_id]


@dataclass(frozen=True)
class Clip:
    frames: list[Image]  # BGR, one per frame
    truth: list[list[TruthBox]]  # per frame, the objects with any pixel in view
    fps: float
    seed: int

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.frames[0].shape[:2]
        return width, height


@dataclass(frozen=True)
class _Mover:
    class_id: int
    outline: NDArray[np.float64]  # points around the origin, pixels
    colour: tuple[int, ...]
    meet: NDArray[np.float64]  # where it is at frame ``meet_frame``
    meet_frame: float
    velocity: NDArray[np.float64]  # pixels per frame

    def centre(self, frame: int, width: int, height: int) -> NDArray[np.float64]:
        """Straight motion, reflected off the borders so that the whole shape stays in view."""
        half = np.abs(self.outline).max(axis=0)
        low = half
        span = np.maximum(np.array([width, height], dtype=np.float64) - 2 * half, 1.0)
        raw = self.meet + self.velocity * (frame - self.meet_frame) - low
        folded = np.mod(raw, 2 * span)
        out: NDArray[np.float64] = low + np.where(folded > span, 2 * span - folded, folded)
        return out


def _outline(class_id: int, rng: np.random.Generator, side: int) -> NDArray[np.float64]:
    size = rng.uniform(0.14, 0.24) * side
    stretch = rng.uniform(0.85, 1.2)
    pts = _polygon(class_id, rng) * np.array([size * stretch, size / stretch]) / 2
    angle = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    out: NDArray[np.float64] = pts @ rot.T
    return out


def _movers(rng: np.random.Generator, background: Image, count: int, frames: int) -> list[_Mover]:
    height, width = background.shape[:2]
    side = min(width, height)
    mean = background.reshape(-1, 3).mean(axis=0)
    movers: list[_Mover] = []
    for pair in range((count + 1) // 2):
        meet = rng.uniform([0.3 * width, 0.3 * height], [0.7 * width, 0.7 * height])
        meet_frame = rng.uniform(0.35, 0.65) * (frames - 1)
        heading = rng.uniform(0, 2 * math.pi)
        for k in range(min(2, count - 2 * pair)):
            class_id = int(rng.integers(0, len(CLASSES)))
            angle = heading + k * rng.uniform(0.4, 0.6) * 2 * math.pi  # paths cross at 70-110 degrees
            speed = rng.uniform(0.5, 0.9) * side / max(frames, 1)
            offset = rng.normal(0.0, 0.04 * side, size=2)  # they overlap, seldom exactly
            movers.append(_Mover(
                class_id=class_id, outline=_outline(class_id, rng, side),
                colour=_contrasting(rng, mean), meet=meet + offset, meet_frame=meet_frame,
                velocity=speed * np.array([math.cos(angle), math.sin(angle)]),
            ))
    return movers


def _render(background: Image, movers: Sequence[_Mover], frame: int,
            rng: np.random.Generator) -> tuple[Image, list[TruthBox]]:
    height, width = background.shape[:2]
    img = background.astype(np.float32) + rng.normal(0.0, 3.0, size=background.shape)
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    owner = np.full((height, width), -1, np.int32)  # which object each pixel shows
    shapes: list[NDArray[np.int32]] = []
    for index, mover in enumerate(movers):  # later movers pass in front
        pts = np.round(mover.outline + mover.centre(frame, width, height)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], mover.colour, lineType=cv2.LINE_AA)
        cv2.fillPoly(owner, [pts], index)
        shapes.append(pts)
    truth: list[TruthBox] = []
    for index, (mover, pts) in enumerate(zip(movers, shapes, strict=True)):
        area = float(cv2.contourArea(pts.astype(np.float32)))
        shown = float(np.count_nonzero(owner == index))
        x0, y0 = np.clip(pts.min(axis=0), 0, [width - 1, height - 1])
        x1, y1 = np.clip(pts.max(axis=0), 0, [width - 1, height - 1])
        if shown == 0 or x1 <= x0 or y1 <= y0:
            continue
        truth.append(TruthBox(index, mover.class_id, (float(x0), float(y0), float(x1) + 1,
                                                       float(y1) + 1), min(1.0, shown / max(area, 1.0))))
    return canvas, truth


def make_clip(seed: int, *, frames: int = 36, width: int = 480, height: int = 360,
              objects: int = 4, fps: float = 10.0) -> Clip:
    """Clip ``seed``: ``frames`` frames of ``objects`` shapes crossing in pairs, and their truth."""
    if frames < 1 or objects < 0 or min(width, height) < 64:
        raise ValueError("a clip needs a frame, no negative object count and sides of 64 px or more")
    rng = np.random.default_rng([seed, 0x5E7])
    background = _background(rng, height, width)
    movers = _movers(rng, background, objects, frames)
    images: list[Image] = []
    truth: list[list[TruthBox]] = []
    for i in range(frames):
        image, boxes = _render(background, movers, i, np.random.default_rng([seed, 0x5E7, i]))
        images.append(image)
        truth.append(boxes)
    return Clip(frames=images, truth=truth, fps=fps, seed=seed)


def write_video(clip: Clip, path: Path) -> Path:
    """The clip as an MPEG-4 Part 2 (``mp4v``) video file that OpenCV and players read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter.fourcc(*"mp4v")
    writer = cv2.VideoWriter(str(path), fourcc, clip.fps, clip.size)
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write {path}")
    try:
        for frame in clip.frames:
            writer.write(frame)
    finally:
        writer.release()
    return path


def write_frames(clip: Clip, folder: Path, *, quality: int = 95) -> list[Path]:
    """The clip as numbered JPEGs (``00000.jpg``, ...) in ``folder``, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(clip.frames):
        path = folder / f"{i:05d}.jpg"
        if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"OpenCV cannot write {path}")
        paths.append(path)
    return paths


def _iou(a: XYXY, b: XYXY) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def identity_switches(truth: Sequence[Sequence[TruthBox]],
                      tracks: Sequence[Mapping[int, XYXY]], *, min_iou: float = 0.5,
                      min_visible: float = 0.5) -> int:
    """How often an object's matched track id changes from the one it last had (MOTChallenge's
    IDSW). ``tracks[f]`` maps track id to box in frame ``f``. Objects less than ``min_visible``
    in view are not scored; matches are greedy by IoU, best first."""
    last: dict[int, int] = {}
    switches = 0
    for objects, found in zip(truth, tracks, strict=True):
        pairs = sorted(((_iou(o.box, box), o.object_id, tid) for o in objects
                        if o.visible >= min_visible for tid, box in found.items()), reverse=True)
        used_objects: set[int] = set()
        used_tracks: set[int] = set()
        for iou, object_id, tid in pairs:
            if iou < min_iou:
                break
            if object_id in used_objects or tid in used_tracks:
                continue
            used_objects.add(object_id)
            used_tracks.add(tid)
            switches += object_id in last and last[object_id] != tid
            last[object_id] = tid
    return switches

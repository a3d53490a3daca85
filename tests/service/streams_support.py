"""Helpers of the stream tests: clips as encoded frames, Ultralytics' own tracking of a clip, and the
comparison of two trackings frame by frame (an oriented box compared by its bound, its rotated box
and its corners; a pose model's box with its keypoints; a segmenter's box with its mask's size and
centre)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from service.demo.clips import Clip, make_clip

XYXY = tuple[float, float, float, float]
Box = tuple[float, ...]  # xyxy; an oriented box's: xyxy, x y w h angle, its corners (8 values);
# a pose model's: xyxy, each keypoint's x y; a segmenter's: xyxy, √(mask area), the mask's centre
Tracks = list[dict[int, tuple[int, Box]]]  # per frame: track id -> class id, box
# an oriented box's tolerances: its bound, centre and sides 1 px, its angle 1e-3, its corners 1 px
OBB_TOLERANCE = (1.0,) * 8 + (1e-3,) + (1.0,) * 8
# a mask's: its box 1 px, the side of a square of its area 2 px (a 1 px border moves it), its centre 1 px
MASK_TOLERANCE = (1.0,) * 4 + (2.0, 1.0, 1.0)

FRAMES = 32
SIZE = (416, 320)


def clip(seed: int) -> Clip:
    return make_clip(seed, frames=FRAMES, width=SIZE[0], height=SIZE[1], objects=4)


def encoded(c: Clip) -> list[bytes]:
    out = []
    for frame in c.frames:
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        out.append(buf.tobytes())
    return out


def ultralytics_tracks(weights: Path, frames: Sequence[bytes], tracker: str, conf: float,
                       iou: float, imgsz: int, task: str = "detect") -> Tracks:
    """``model.track(frame, persist=True, ...)`` over one stream's frames alone, decoded as the
    service decodes them (an ``obb`` model's boxes: bound, ``xywhr`` and corners)."""
    from ultralytics import YOLO

    model = YOLO(str(weights), task=task)
    out: Tracks = []
    for data in frames:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        r = model.track(image, persist=True, tracker=tracker, rect=False, conf=conf, iou=iou,
                        imgsz=imgsz, verbose=False)[0]
        found: Any = r.obb if task == "obb" else r.boxes
        ids = [] if found.id is None else found.id.int().tolist()
        rows = found.xyxy.numpy()
        if task == "obb":
            rows = np.concatenate([rows, found.xywhr.numpy(),
                                   found.xyxyxyxy.numpy().reshape(-1, 8)], axis=1)
        elif task == "pose" and len(rows):
            rows = np.concatenate([rows, r.keypoints.xy.numpy().reshape(len(rows), -1)], axis=1)
        elif task == "segment" and len(rows):
            shape = image.shape[:2]
            rows = np.concatenate([rows, np.array([mask_features([p], shape) for p in r.masks.xy])],
                                  axis=1)
        boxes = zip(ids, found.cls.int().tolist(), rows.tolist(), strict=True)
        out.append({i: (c, tuple(b)) for i, c, b in boxes})
    return out


def mask_features(polygons: Sequence[Any], shape: tuple[int, int]) -> tuple[float, float, float]:
    """A mask drawn from its outlines: the side of a square of its area, and its centre."""
    raster = np.zeros(shape, np.uint8)
    for polygon in polygons:
        if len(polygon) >= 3:
            cv2.fillPoly(raster, [np.round(np.asarray(polygon)).astype(np.int32)], 1)
    ys, xs = np.nonzero(raster)
    if not len(xs):
        return 0.0, 0.0, 0.0
    return float(np.sqrt(len(xs))), float(xs.mean()), float(ys.mean())


def service_tracks(answers: Sequence[Mapping[str, object]],
                   shape: tuple[int, int] = (SIZE[1], SIZE[0])) -> Tracks:
    """The tracked boxes of a stream's answers (``shape``: the frames' height and width, where a
    mask is drawn)."""
    out: Tracks = []
    for answer in answers:
        frame: dict[int, tuple[int, Box]] = {}
        for d in answer["detections"]:  # type: ignore[attr-defined]
            if d["track_id"] is not None:
                b = d["box_2d"]
                box: Box = (b["x_min"], b["y_min"], b["x_max"], b["y_max"])
                if "rotated_box" in d:
                    r = d["rotated_box"]
                    box += (r["x_center"], r["y_center"], r["width"], r["height"], r["angle"],
                            *np.ravel(d["polygon"]).tolist())
                if "keypoints" in d:
                    box += tuple(v for k in d["keypoints"] for v in (k["x"], k["y"]))
                if "mask" in d:
                    box += mask_features(d["mask"]["polygons"], shape)
                frame[d["track_id"]] = (d["class_id"], box)
        out.append(frame)
    return out


def assert_same_tracking(ours: Tracks, theirs: Tracks, where: str,
                         tolerance: float | Sequence[float] = 1.0) -> int:
    """The same boxes (class, and each value within ``tolerance``: px, or one per value) in every
    frame, partitioned into tracks the same way: one mapping of our ids to theirs, one-to-one, for
    the whole clip. Returns the number of tracked boxes compared."""
    mapping: dict[int, int] = {}
    seen = 0
    for f, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert len(a) == len(b), f"{where} frame {f}: {len(a)} tracked boxes, Ultralytics {len(b)}"
        for our_id, (cls, box) in a.items():
            near = [tid for tid, (other_cls, other) in b.items()
                    if other_cls == cls and (np.abs(np.subtract(box, other)) <= tolerance).all()]
            assert near, f"{where} frame {f}: our track {our_id} {cls} at {box} is not in {b}"
            their_id = mapping.get(our_id, near[0])
            assert their_id in near, \
                f"{where} frame {f}: our track {our_id} was theirs {their_id}, now one of {near}"
            mapping[our_id] = their_id
            seen += 1
        taken = [mapping[i] for i in a]
        assert len(set(taken)) == len(taken), f"{where} frame {f}: two of our tracks are one of theirs"
    assert len(set(mapping.values())) == len(mapping), f"{where}: two of our tracks are one of theirs"
    return seen


def boxes_only(tracks: Tracks) -> list[dict[int, XYXY]]:
    return [{tid: (box[0], box[1], box[2], box[3]) for tid, (_, box) in frame.items()}
            for frame in tracks]

"""One stream's tracker: Ultralytics' ByteTrack or BoT-SORT (without ReID), fed with our own NMS output.

The trackers read, of the detections they are given, what Ultralytics' ``Boxes`` offer after
``.cpu().numpy()``: ``conf``, ``cls``, ``xywh``, ``xyxy``, ``len`` and boolean indexing. ``_Boxes`` is
that, over float32 arrays as Ultralytics holds them. The answer follows ``model.track()``: a detection
matched to a confirmed track gets the track's id and the track's (Kalman-filtered) box.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["TrackedBox", "Tracker", "TrackerSettings", "preload"]

TrackerKind = Literal["bytetrack", "botsort"]
Floats = NDArray[np.float32]


class TrackerSettings(BaseModel):
    """A stream's tracker, chosen by its first frame; unset thresholds take Ultralytics' defaults
    (``bytetrack.yaml``, ``botsort.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracker: TrackerKind = Field("bytetrack", description="bytetrack or botsort (without ReID)")
    track_high_thresh: float | None = Field(None, ge=0.0, le=1.0,
                                            description="First association's score threshold")
    track_low_thresh: float | None = Field(None, ge=0.0, le=1.0,
                                           description="Second association's score threshold")
    new_track_thresh: float | None = Field(None, ge=0.0, le=1.0,
                                           description="Score needed to start a track")
    track_buffer: int | None = Field(None, ge=1, le=10_000,
                                     description="Frames a lost track is kept for")
    match_thresh: float | None = Field(None, ge=0.0, le=1.0, description="Association threshold")
    fuse_score: bool | None = Field(None, description="Fuse the score into the matching cost")
    gmc_method: Literal["sparseOptFlow", "orb", "sift", "ecc", "none"] | None = Field(
        None, description="BoT-SORT's camera motion compensation")


@functools.cache
def _defaults(kind: TrackerKind) -> dict[str, Any]:
    from ultralytics.utils import YAML
    from ultralytics.utils.checks import check_yaml

    loaded: dict[str, Any] = YAML.load(check_yaml(f"{kind}.yaml"))  # type: ignore[no-untyped-call]
    return loaded


def preload() -> None:
    """Import the trackers and read their defaults (seconds, once per process)."""
    import ultralytics.trackers.bot_sort
    import ultralytics.trackers.byte_tracker  # noqa: F401

    _defaults("bytetrack")
    _defaults("botsort")


def _xyxy_to_xywh(xyxy: Floats) -> Floats:
    out = np.empty_like(xyxy)
    out[:, 0] = (xyxy[:, 0] + xyxy[:, 2]) / 2
    out[:, 1] = (xyxy[:, 1] + xyxy[:, 3]) / 2
    out[:, 2] = xyxy[:, 2] - xyxy[:, 0]
    out[:, 3] = xyxy[:, 3] - xyxy[:, 1]
    return out


class _Boxes:
    """What the trackers read of Ultralytics' ``Boxes``."""

    def __init__(self, xyxy: Floats, conf: Floats, cls: Floats) -> None:
        self.xyxy, self.conf, self.cls = xyxy, conf, cls
        self.xywh = _xyxy_to_xywh(xyxy)

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: Any) -> _Boxes:
        return _Boxes(self.xyxy[index], self.conf[index], self.cls[index])


@dataclass(frozen=True)
class TrackedBox:
    """A detection the tracker matched to a confirmed track in this frame."""

    index: int  # into the frame's detections
    track_id: int
    box: tuple[float, float, float, float]  # the track's box, x1 y1 x2 y2


class Tracker:
    """One stream's tracker. Not thread-safe: the stream calls it for one frame at a time."""

    def __init__(self, settings: TrackerSettings) -> None:
        from ultralytics.trackers.bot_sort import BOTSORT
        from ultralytics.trackers.byte_tracker import BYTETracker

        given = settings.model_dump(exclude={"tracker"}, exclude_none=True)
        args = SimpleNamespace(**{**_defaults(settings.tracker), **given, "with_reid": False})
        self.settings = settings
        self._impl: Any = (BOTSORT(args) if settings.tracker == "botsort"
                           else BYTETracker(args))  # type: ignore[no-untyped-call]
        self._empty = _Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                             np.zeros(0, np.float32))

    @property
    def lost_after(self) -> int:
        """Frames with no detection after which every track is gone."""
        return int(self._impl.max_frames_lost) + 1

    def update(self, boxes: NDArray[np.floating[Any]], scores: NDArray[np.floating[Any]],
               classes: NDArray[np.integer[Any]], image: NDArray[np.uint8] | None
               ) -> list[TrackedBox]:
        """Track one frame's detections (xyxy boxes, scores and class ids, as the model gave
        them); ``image`` is the decoded frame (BoT-SORT's motion compensation compares
        consecutive frames)."""
        dets = _Boxes(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(classes, np.float32))
        rows = self._impl.update(dets, image)
        return [TrackedBox(int(r[-1]), int(r[4]), (float(r[0]), float(r[1]), float(r[2]), float(r[3])))
                for r in rows]

    def skip(self, frames: int) -> None:
        """Let ``frames`` frames pass with nothing seen (a gap in the stream's numbers); past
        ``lost_after`` more make no difference."""
        for _ in range(min(frames, self.lost_after)):
            self._impl.update(self._empty, None)

    def alive(self) -> int:
        """Confirmed tracks seen in the last frame."""
        return sum(1 for t in self._impl.tracked_stracks if t.is_activated)

"""One stream's tracker: Ultralytics' ByteTrack or BoT-SORT (without ReID), fed with our own NMS output.

The trackers read, of the detections they are given, what Ultralytics' ``Boxes`` offer after
``.cpu().numpy()``: ``conf``, ``cls``, ``xywh``, ``xyxy``, ``len`` and boolean indexing. ``_Boxes`` is
that, over float32 arrays as Ultralytics holds them. The answer follows ``model.track()``: a detection
matched to a confirmed track gets the track's id and the track's (Kalman-filtered) box.

Oriented boxes (``obb`` models) are tracked as ``model.track()`` tracks them: given the rotated
boxes (``xywhr``), the detections are ``_RotatedBoxes``, which offer ``xywhr`` as Ultralytics'
``OBB`` does; the trackers then keep each track's angle, match by probabilistic IoU of the rotated
boxes, and the answer is the track's rotated box (its centre, width and height Kalman-filtered, its
angle the detection's, taken within a half turn of the track's) with its axis-aligned bound.

Time: ``track_buffer`` counts frames at the trackers' nominal 30 frames/s, so a lost track is
kept ``track_buffer / 30`` seconds; the stream's own clock (:mod:`.clock`, from ``timestamp_ms``)
turns that into frames at the stream's rate, and its gaps into frames with nothing seen.

State: :meth:`Tracker.export` gives what the tracker knows (tracks with their Kalman state and
angle, the frame counter, the next id, the clock) as plain arrays and numbers, and
:meth:`Tracker.restore` builds a tracker that goes on from it exactly (BoT-SORT's camera-motion
compensation, whose state is the previous frame's image, starts again from the next frame).
"""

from __future__ import annotations

import functools
import sys
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from service.engine.geometry import rotated_corners
from service.runtime.streams.clock import NOMINAL_FPS, StreamClock

__all__ = ["TRACK_RECORD", "TrackedBox", "Tracker", "TrackerSettings", "TrackerState", "preload"]

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


class _RotatedBoxes(_Boxes):
    """What the trackers read of Ultralytics' ``OBB``: ``xywhr`` too (its presence is what makes
    them track rotated boxes), ``xyxy`` the rotated boxes' axis-aligned bounds."""

    def __init__(self, xyxy: Floats, conf: Floats, cls: Floats, xywhr: Floats) -> None:
        super().__init__(xyxy, conf, cls)
        self.xywhr = xywhr

    def __getitem__(self, index: Any) -> _RotatedBoxes:
        return _RotatedBoxes(self.xyxy[index], self.conf[index], self.cls[index], self.xywhr[index])


@dataclass(frozen=True)
class TrackedBox:
    """A detection the tracker matched to a confirmed track in this frame."""

    index: int  # into the frame's detections
    track_id: int
    box: tuple[float, float, float, float]  # the track's box, x1 y1 x2 y2 (rotated: its bound)
    # an oriented box's track: x_center, y_center, width, height, angle (radians), as model.track()
    rotated: tuple[float, float, float, float, float] | None = None


# One track, as saved: where it is (tracked, lost, removed: bits 0, 1, 2 of ``pools``), its
# identity and counters, its Kalman state (mean and covariance, float64 as the filter keeps them),
# and an oriented box's angle (NaN: the track is not of rotated boxes).
TRACK_RECORD = np.dtype([
    ("track_id", "<i8"), ("pools", "u1"), ("state", "u1"), ("activated", "u1"),
    ("score", "<f4"), ("cls", "<f4"), ("idx", "<f8"), ("tracklet_len", "<i8"),
    ("start_frame", "<i8"), ("frame_id", "<i8"), ("tlwh", "<f4", (4,)),
    ("mean", "<f8", (8,)), ("covariance", "<f8", (8, 8)), ("angle", "<f8"),
])
_TRACKED, _LOST, _REMOVED = 1, 2, 4


@dataclass
class TrackerState:
    """What a tracker knows, as plain values: enough to go on exactly where it stopped."""

    settings: TrackerSettings
    frame_id: int
    next_id: int
    tracks: NDArray[np.void]  # TRACK_RECORD rows
    clock_ms: float | None = None
    intervals: list[float] = field(default_factory=list)


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
        self._buffer = int(args.track_buffer)  # frames at the nominal rate
        self.clock = StreamClock()
        self._empty = _Boxes(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                             np.zeros(0, np.float32))

    @property
    def lost_after(self) -> int:
        """Frames with no detection after which every track is gone."""
        return int(self._impl.max_frames_lost) + 1

    @property
    def lost_timeout_s(self) -> float:
        """Seconds a lost track is kept (``track_buffer`` frames at the nominal rate)."""
        return self._buffer / NOMINAL_FPS

    def tick(self, timestamp_ms: float | None) -> int | None:
        """The stream's clock reads the next frame's timestamp: the frames missing before it (None
        without a timestamp, or when the clock cannot tell), and the lost-track timeout in frames
        at the stream's own rate."""
        if timestamp_ms is None:
            return None
        gap = self.clock.advance(timestamp_ms)
        self._impl.max_frames_lost = max(1, round(self._buffer * self.clock.fps / NOMINAL_FPS))
        return gap

    def update(self, boxes: NDArray[np.floating[Any]], scores: NDArray[np.floating[Any]],
               classes: NDArray[np.integer[Any]], image: NDArray[np.uint8] | None,
               xywhr: NDArray[np.floating[Any]] | None = None) -> list[TrackedBox]:
        """Track one frame's detections (xyxy boxes, scores and class ids, as the model gave
        them); ``image`` is the decoded frame (BoT-SORT's motion compensation compares
        consecutive frames). An oriented-box model's frame gives its rotated boxes too
        (``xywhr``, ``boxes`` their axis-aligned bounds): they are what is tracked, and each
        tracked box carries its track's rotated box."""
        xyxy = np.asarray(boxes, np.float32).reshape(-1, 4)
        conf, cls = np.asarray(scores, np.float32), np.asarray(classes, np.float32)
        dets = (_Boxes(xyxy, conf, cls) if xywhr is None else
                _RotatedBoxes(xyxy, conf, cls, np.asarray(xywhr, np.float32).reshape(-1, 5)))
        rows: NDArray[np.float32] = self._impl.update(dets, image)
        if not len(rows):
            return []
        if rows.shape[1] == 8:  # x1 y1 x2 y2, id, score, class, index
            return [TrackedBox(int(r[7]), int(r[4]), _four(r[:4])) for r in rows]
        # x y w h angle, id, score, class, index: the track's rotated box, bounded as OBB.xyxy
        _, bounds = rotated_corners(rows[:, :5])
        return [TrackedBox(int(r[8]), int(r[5]), _four(b), (*_four(r[:4]), float(r[4])))
                for r, b in zip(rows, bounds, strict=True)]

    def skip(self, frames: int) -> None:
        """Let ``frames`` frames pass with nothing seen (a gap in the stream's numbers); past
        ``lost_after`` more make no difference."""
        for _ in range(min(frames, self.lost_after)):
            self._impl.update(self._empty, None)

    def alive(self) -> int:
        """Confirmed tracks seen in the last frame."""
        return sum(1 for t in self._impl.tracked_stracks if t.is_activated)

    # state ------------------------------------------------------------------------------------
    def export(self) -> TrackerState:
        """The tracker's state now (a removed track is kept only while a lost pool still holds it:
        the trackers drop it from there one frame later, by its id)."""
        impl = self._impl
        pools: dict[int, tuple[Any, int]] = {}
        for bit, tracks in ((_TRACKED, impl.tracked_stracks), (_LOST, impl.lost_stracks)):
            for t in tracks:
                _, seen = pools.get(id(t), (t, 0))
                pools[id(t)] = (t, seen | bit)
        removed = {id(t) for t in impl.removed_stracks}
        rows = np.zeros(len(pools), TRACK_RECORD)
        for row, (t, bits) in zip(rows, pools.values(), strict=True):
            row["pools"] = bits | (_REMOVED if id(t) in removed else 0)
            row["track_id"], row["state"], row["activated"] = t.track_id, t.state, t.is_activated
            row["score"], row["cls"], row["idx"] = t.score, t.cls, t.idx
            row["tracklet_len"], row["start_frame"] = t.tracklet_len, t.start_frame
            row["frame_id"], row["tlwh"] = t.frame_id, t._tlwh
            row["mean"], row["covariance"] = t.mean, t.covariance
            row["angle"] = np.nan if t.angle is None else t.angle
        _, (ids,), used = impl._ids.__reduce__()  # a range iterator: its range and position
        return TrackerState(self.settings, int(impl.frame_id), int(ids.start + used * ids.step),
                            rows, self.clock.last_ms, list(self.clock.intervals))

    @classmethod
    def restore(cls, state: TrackerState) -> Tracker:
        """A tracker that goes on from ``state``."""
        tracker = cls(state.settings)
        impl = tracker._impl
        impl.frame_id = state.frame_id
        impl._ids = iter(range(state.next_id, sys.maxsize))
        tracked: list[Any] = []
        lost: list[Any] = []
        removed: list[Any] = []
        for row in state.tracks:
            t = _track(impl, row)
            bits = int(row["pools"])
            for bit, pool in ((_TRACKED, tracked), (_LOST, lost), (_REMOVED, removed)):
                if bits & bit:
                    pool.append(t)
        impl.tracked_stracks, impl.lost_stracks, impl.removed_stracks = tracked, lost, removed
        tracker.clock = StreamClock(state.clock_ms, deque(state.intervals, maxlen=8))
        if state.intervals:
            impl.max_frames_lost = max(1, round(tracker._buffer * tracker.clock.fps / NOMINAL_FPS))
        return tracker


def _track(impl: Any, row: np.void) -> Any:
    """One saved track as the tracker's own track object, bound to its Kalman filter and ids."""
    from ultralytics.trackers.bot_sort import BOTSORT, BOTrack
    from ultralytics.trackers.byte_tracker import STrack

    bot = isinstance(impl, BOTSORT)
    t: Any = BOTrack.__new__(BOTrack) if bot else STrack.__new__(STrack)
    t.track_id, t.state, t.is_activated = int(row["track_id"]), int(row["state"]), bool(row["activated"])
    t.score, t.cls, t.idx = np.float32(row["score"]), np.float32(row["cls"]), np.float64(row["idx"])
    t.tracklet_len, t.start_frame = int(row["tracklet_len"]), int(row["start_frame"])
    t.frame_id, t._tlwh = int(row["frame_id"]), np.array(row["tlwh"], np.float32)
    t.mean, t.covariance = np.array(row["mean"]), np.array(row["covariance"])
    t.angle = None if np.isnan(row["angle"]) else np.float64(row["angle"])
    t.kalman_filter, t.next_id = impl.kalman_filter, impl._ids.__next__
    if bot:
        t.smooth_feat, t.curr_feat, t.alpha = None, None, 0.9
    return t


def _four(values: NDArray[np.floating[Any]]) -> tuple[float, float, float, float]:
    return float(values[0]), float(values[1]), float(values[2]), float(values[3])

"""One frame of a stream, from bytes to a ``TrackedFrame``: admitted by its stream's owner in
``seq`` order, detected in the batches of this process (which every request shares), then tracked
by the owner's tracker once every earlier frame in flight has been.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from service.engine.geometry import rotated_corners
from service.engine.types import Detections, DetectParams
from service.runtime.result import Result
from service.runtime.streams.table import FrameDetections
from service.runtime.streams.tracking import TrackedBox, TrackerSettings

if TYPE_CHECKING:
    from service.metrics import ServiceMetrics
    from service.runtime.inferencer import Inferencer
    from service.runtime.streams.registry import StreamRegistry

__all__ = ["TrackedFrame", "process_frame"]


@dataclass(frozen=True)
class TrackedFrame:
    """A frame's result, each detection matched to a confirmed track carrying the track's box
    (as Ultralytics' ``track()`` answers; an oriented box its track's rotated box, corners and
    their bound), and the track ids, one per detection (None: not matched)."""

    result: Result
    track_ids: list[int | None]
    stream_id: str
    seq: int
    started: bool  # this frame started the stream
    timestamp_ms: float | None = None


async def process_frame(
    registry: StreamRegistry, inferencer: Inferencer, metrics: ServiceMetrics, stream_id: str,
    data: bytes, name: str, seq: int, detect: DetectParams, tracker: TrackerSettings,
    deadline: float | None, timestamp_ms: float | None = None,
) -> TrackedFrame:
    """Detect and track frame ``seq`` of ``stream_id`` (taken at ``timestamp_ms``, the stream's
    own clock, when given)."""
    ticket = await registry.admit(stream_id, seq, tracker)
    try:
        result, image = await inferencer.detect_frame(data, name, detect, deadline)
    except BaseException:
        registry.abandon(ticket)
        raise
    dets = result.detections
    frame = FrameDetections(dets.boxes, dets.scores, dets.class_ids,
                            image if ticket.needs_image else None, timestamp_ms, dets.rotated)
    tracking = await registry.track(ticket, frame)
    moved, ids = _with_tracks(dets, tracking.boxes)
    return TrackedFrame(result.with_detections(moved), ids, stream_id, seq, tracking.started,
                        timestamp_ms)


def _with_tracks(dets: Detections, tracked: list[TrackedBox]
                 ) -> tuple[Detections, list[int | None]]:
    """The detections with each tracked one's box replaced by its track's, and the ids. A box
    is clipped to the image as ``model.track()`` clips the track's box (a Kalman prediction can
    reach past the edge); an oriented box takes its track's rotated box, and its corners and
    axis-aligned bound from that, unclipped, as ``model.track()`` answers an oriented-box model."""
    ids: list[int | None] = [None] * len(dets)
    if not tracked:
        return dets, ids
    boxes = dets.boxes.astype(np.float64)  # the tracker's boxes, kept at their precision
    for t in tracked:
        ids[t.index] = t.track_id
        boxes[t.index] = t.box
    rotated_tracks = [t for t in tracked if t.rotated is not None]
    if dets.rotated is None or dets.corners is None or not rotated_tracks:
        np.clip(boxes[:, 0::2], 0, dets.width, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, dets.height, out=boxes[:, 1::2])
        return replace(dets, boxes=boxes), ids
    index = [t.index for t in rotated_tracks]
    rotated, corners = dets.rotated.copy(), dets.corners.copy()
    rotated[index] = [t.rotated for t in rotated_tracks]
    corners[index], boxes[index] = rotated_corners(rotated[index])
    return replace(dets, boxes=boxes, rotated=rotated, corners=corners), ids

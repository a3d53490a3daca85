"""One frame of a stream, from bytes to a ``TrackedFrame``: admitted in ``seq`` order, detected in
the batches every request shares, then tracked by its stream's tracker once every earlier frame in
flight has been.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from service.engine.types import Detections, DetectParams
from service.runtime.result import Result
from service.runtime.streams.errors import StaleFrame
from service.runtime.streams.stream import Stream
from service.runtime.streams.tracking import TrackedBox, TrackerSettings

if TYPE_CHECKING:
    from service.metrics import ServiceMetrics
    from service.runtime.inferencer import Inferencer
    from service.runtime.streams.registry import StreamRegistry

__all__ = ["TrackedFrame", "process_frame"]


@dataclass(frozen=True)
class TrackedFrame:
    """A frame's result, each detection matched to a confirmed track carrying the track's box
    (as Ultralytics' ``track()`` answers), and the track ids, one per detection (None: not
    matched)."""

    result: Result
    track_ids: list[int | None]
    stream_id: str
    seq: int
    started: bool  # this frame started the stream


async def process_frame(
    registry: StreamRegistry, inferencer: Inferencer, metrics: ServiceMetrics, stream_id: str,
    data: bytes, name: str, seq: int, detect: DetectParams, tracker: TrackerSettings,
    deadline: float | None,
) -> TrackedFrame:
    """Detect and track frame ``seq`` of ``stream_id``."""
    stream = registry.get_or_start(stream_id, tracker)
    try:
        stream.admit(seq)
    except StaleFrame:
        metrics.stream_frames_dropped.labels("stale").inc()
        raise
    handed_over = False
    try:
        result, image = await inferencer.detect_frame(data, name, detect, deadline)
        await stream.wait_turn(seq)
        started = stream.frames == 0
        work = asyncio.ensure_future(registry.in_thread(
            _tracking_step(stream, seq, result.detections, image)))
        # the stream's next frame waits until this one's update is over, even if its caller left
        work.add_done_callback(lambda w: stream.leave(seq, tracked=not w.cancelled()
                                                      and w.exception() is None))
        handed_over = True
        tracked = await asyncio.shield(work)
    except BaseException:
        metrics.stream_frames_dropped.labels("failed").inc()
        raise
    finally:
        if not handed_over:
            stream.leave(seq, tracked=False)
    metrics.stream_frames.inc()
    registry.count_tracks()
    moved, ids = _with_tracks(result.detections, tracked)
    return TrackedFrame(result.with_detections(moved), ids, stream_id, seq, started)


def _tracking_step(stream: Stream, seq: int, dets: Detections,
                   image: NDArray[np.uint8]) -> Callable[[], list[TrackedBox]]:
    gap = stream.gap_before(seq)

    def step() -> list[TrackedBox]:
        if gap > 0:
            stream.tracker.skip(gap)
        tracked = stream.tracker.update(dets.boxes, dets.scores, dets.class_ids, image)
        stream.tracks = stream.tracker.alive()
        return tracked

    return step


def _with_tracks(dets: Detections, tracked: list[TrackedBox]
                 ) -> tuple[Detections, list[int | None]]:
    """The detections with each tracked one's box replaced by its track's, and the ids."""
    ids: list[int | None] = [None] * len(dets)
    if not tracked:
        return dets, ids
    boxes = dets.boxes.astype(np.float64)  # the tracker's boxes, kept at their precision
    for t in tracked:
        ids[t.index] = t.track_id
        boxes[t.index] = t.box
    return replace(dets, boxes=boxes), ids

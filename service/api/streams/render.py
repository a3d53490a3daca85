"""A tracked frame as the contract's ``StreamResult``: ``/v1``'s detection fields plus each
detection's ``track_id``, and the frame's place in its stream."""

from __future__ import annotations

from service.api import render
from service.runtime.streams.pipeline import TrackedFrame
from wire.schemas import ImageDimensions, StreamInfo, StreamResult

__all__ = ["stream_result"]


def stream_result(frame: TrackedFrame) -> StreamResult:
    r = frame.result
    found = render.tracked_detections(r.detections, frame.track_ids)
    return StreamResult(
        image_name=r.name,
        image_dimensions=ImageDimensions(width=r.detections.width, height=r.detections.height),
        detections=found, detection_count=len(found), processing_metadata=render.metadata(r),
        stream=StreamInfo(id=frame.stream_id, seq=frame.seq, stream_started=frame.started,
                          timestamp_ms=frame.timestamp_ms))

"""One frame of a stream, from bytes to a ``StreamResult``: admitted in ``seq`` order, detected in the
batches every request shares, then tracked by its stream's tracker once every earlier frame in
flight has been.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from service.engine.decode import decode_image
from service.engine.types import Detection as EngineDetection
from service.engine.types import Prepared
from service.results import to_detection
from service.streams.errors import StaleFrame
from service.streams.stream import Stream
from service.streams.tracking import TrackedBox
from wire.schemas import DetectionResult, StreamInfo, StreamResult, TrackedDetection

if TYPE_CHECKING:
    from service.bodies import Upload
    from service.inference import Inferencer
    from service.metrics import ServiceMetrics
    from service.streams.bodies import StreamParams
    from service.streams.registry import StreamRegistry

__all__ = ["process_frame"]


async def process_frame(
    registry: StreamRegistry, inferencer: Inferencer, metrics: ServiceMetrics, stream_id: str,
    upload: Upload, seq: int, params: StreamParams, deadline: float | None,
) -> StreamResult:
    """Detect and track frame ``seq`` of ``stream_id``."""
    stream = registry.get_or_start(stream_id, params.tracker)
    try:
        stream.admit(seq)
    except StaleFrame:
        metrics.stream_frames_dropped.labels("stale").inc()
        raise
    handed_over = False
    try:
        decoded: list[NDArray[np.uint8]] = []
        result = await inferencer.detect_frame(_preparer(inferencer, upload, decoded), upload.name,
                                               params.detect, deadline)
        await stream.wait_turn(seq)
        started = stream.frames == 0
        step = _tracking_step(stream, seq, result, decoded[0])
        work = asyncio.ensure_future(registry.in_thread(step))
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
    return _answer(result, tracked, StreamInfo(id=stream_id, seq=seq, stream_started=started))


def _preparer(inferencer: Inferencer, upload: Upload,
              decoded: list[NDArray[np.uint8]]) -> Callable[[], Prepared]:
    """Decode and letterbox in the decode pool, keeping the decoded frame for the tracker."""
    engine = inferencer.engine

    def prepare() -> Prepared:
        image = decode_image(upload.data, engine.limits)
        decoded.append(image)
        return engine.prepare_array(image, upload.name)

    return prepare


def _tracking_step(stream: Stream, seq: int, result: DetectionResult,
                   image: NDArray[np.uint8]) -> Callable[[], list[TrackedBox]]:
    gap = stream.gap_before(seq)
    dets = result.detections
    boxes = [(d.box_2d.x_min, d.box_2d.y_min, d.box_2d.x_max, d.box_2d.y_max) for d in dets]
    scores = [d.confidence for d in dets]
    classes = [d.class_id for d in dets]

    def step() -> list[TrackedBox]:
        if gap > 0:
            stream.tracker.skip(gap)
        tracked = stream.tracker.update(boxes, scores, classes, image)
        stream.tracks = stream.tracker.alive()
        return tracked

    return step


def _answer(result: DetectionResult, tracked: list[TrackedBox], info: StreamInfo) -> StreamResult:
    """The frame's detections with their track ids; a tracked one gets its track's box, as in
    Ultralytics' ``track()``."""
    width, height = result.image_dimensions.width, result.image_dimensions.height
    by_index = {t.index: t for t in tracked}
    detections = []
    for i, d in enumerate(result.detections):
        t = by_index.get(i)
        fields = d.model_dump()
        if t is not None:
            moved = EngineDetection(d.class_id, d.class_name, d.confidence, *t.box)
            fields = to_detection(moved, width, height).model_dump()
        detections.append(TrackedDetection(**fields, track_id=None if t is None else t.track_id))
    return StreamResult(
        image_name=result.image_name, image_dimensions=result.image_dimensions,
        detections=detections, detection_count=len(detections),
        processing_metadata=result.processing_metadata, stream=info,
    )

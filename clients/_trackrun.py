"""What ``yoloserve track`` does: read a video (OpenCV) or a folder/glob of images, send the
frames through one stream, write a JSON line per frame and, when asked, an annotated video.

OpenCV is needed for video files and for ``--annotate``; images alone go as files without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from clients._annotate import AnnotatedVideo
from clients._client import AsyncDetectionClient
from clients._images import ImageInput
from clients._many import Progress
from clients._paths import IMAGE_EXTENSIONS, iter_image_paths
from clients._track import LostFrame, TrackerValue
from clients._video import encode_jpeg, import_cv2, video_frames
from clients.errors import ClientError, InvalidRequest
from wire.schemas import StreamResult

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["TrackJob", "TrackStats", "default_stream_id", "is_video", "run_track"]


def is_video(source: str) -> bool:
    """A file that is not an image by its extension: read as a video."""
    return os.path.isfile(source) and Path(source).suffix.lower() not in IMAGE_EXTENSIONS


def default_stream_id(source: str) -> str:
    """The source's name made a valid stream id, plus a random suffix: a new stream each run
    (a rerun starts again at seq 0, which the previous run's stream would refuse)."""
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(source).stem)[:100]
    return f"{stem or 'stream'}-{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class TrackJob:
    source: str
    url: str
    stream_id: str
    annotate: Path | None
    rate: float | None
    max_attempts: int
    timeout: float
    api_key: str | None
    options: dict[str, Any]  # conf, iou, max_det, classes, tracker
    tracker_options: dict[str, TrackerValue] = field(default_factory=dict)


@dataclass
class TrackStats:
    frames: int = 0
    detections: int = 0
    lost: int = 0
    failed: bool = False
    elapsed_s: float = 0.0
    tracks: set[int] = field(default_factory=set)

    def summary(self) -> str:
        rate = self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"frames: {self.frames}  detections: {self.detections}  tracks: {len(self.tracks)}  "
            f"lost answers: {self.lost}  throughput: {rate:.1f} frames/s  "
            f"elapsed: {self.elapsed_s:.2f} s"
        )


@dataclass(frozen=True, slots=True)
class _Frame:
    index: int
    payload: ImageInput  # what is sent: a path, or JPEG bytes
    image: npt.NDArray[Any] | None  # the pixels, kept for the annotated video
    path: str | None


def count_frames(source: str) -> int | None:
    """How many frames the source has (a video's header may not know: None)."""
    if is_video(source):
        cv2 = import_cv2()
        capture = cv2.VideoCapture(source)
        try:
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            capture.release()
        return count if count > 0 else None
    return sum(1 for _ in iter_image_paths([source]))


def source_fps(source: str, fallback: float) -> float:
    if not is_video(source):
        return fallback
    cv2 = import_cv2()
    capture = cv2.VideoCapture(source)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    finally:
        capture.release()
    return fps if fps > 0 else fallback


async def _frames(source: str, keep_pixels: bool) -> AsyncGenerator[_Frame, None]:
    if is_video(source):
        async for video_frame in video_frames(source):
            data = await asyncio.to_thread(encode_jpeg, video_frame.image)
            pixels = video_frame.image if keep_pixels else None
            yield _Frame(video_frame.index, data, pixels, None)
        return
    for index, path in enumerate(iter_image_paths([source])):
        pixels = await asyncio.to_thread(_imread, path) if keep_pixels else None
        yield _Frame(index, path, pixels, str(path))


def _imread(path: Path) -> npt.NDArray[Any]:
    cv2 = import_cv2()
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InvalidRequest(f"OpenCV cannot read {path}", code="unreadable_image")
    return image  # type: ignore[no-any-return]


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


async def run_track(
    job: TrackJob,
    sink: TextIO,
    on_progress: Callable[[Progress], None],
    video: AnnotatedVideo | None,
) -> TrackStats:
    """Send every frame of ``job.source`` through stream ``job.stream_id``, in order."""
    stats = TrackStats()
    started = time.monotonic()
    pending: dict[int, _Frame] = {}  # sent or about to be, not yet written

    async def feed() -> AsyncGenerator[ImageInput, None]:
        async for frame in _frames(job.source, keep_pixels=video is not None):
            pending[frame.index] = frame
            yield frame.payload

    def write(seq: int, record: dict[str, Any], result: StreamResult | None) -> None:
        frame = pending.pop(seq, None)
        if frame is not None and frame.path is not None:
            record = {"frame": seq, "path": frame.path, **record}
        else:
            record = {"frame": seq, **record}
        sink.write(_line(record))
        if video is not None and frame is not None and frame.image is not None:
            video.write(frame.image, result)
        stats.frames += 1
        on_progress(Progress(stats.frames, stats.lost, time.monotonic() - started))

    def on_lost(lost: LostFrame) -> None:
        stats.lost += 1
        write(lost.seq, {"seq": lost.seq, "error": lost.error.to_dict()}, None)

    client = AsyncDetectionClient(
        job.url,
        timeout=job.timeout,
        max_attempts=job.max_attempts,
        api_key=job.api_key,
        max_connections=4,
    )
    async with client:
        try:
            track = client.track(
                job.stream_id,
                feed(),
                rate=job.rate,
                on_lost=on_lost,
                tracker_options=job.tracker_options,
                **job.options,
            )
            async for result in track:
                stats.detections += result.detection_count
                stats.tracks.update(d.track_id for d in result.detections if d.track_id is not None)
                write(result.stream.seq, result.model_dump(mode="json"), result)
        except ClientError as exc:
            stats.failed = True
            failed_at = min(pending) if pending else stats.frames
            write(failed_at, {"error": exc.to_dict()}, None)
    sink.flush()
    stats.elapsed_s = time.monotonic() - started
    return stats

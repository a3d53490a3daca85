"""Frames of a video file, read lazily with OpenCV (imported only when a video is read: the light
install has no OpenCV), one frame at a time in a worker thread."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clients.errors import InvalidRequest

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["MISSING_OPENCV", "VideoFrame", "encode_jpeg", "import_cv2", "read_video", "video_frames"]

MISSING_OPENCV = (
    "reading video needs OpenCV, which the light install leaves out: "
    "pip install 'yoloserve[server]' (or opencv-python-headless)"
)


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """One decoded frame: its index in the file, its time, and its BGR pixels."""

    index: int
    timestamp_ms: float
    image: npt.NDArray[Any]


def import_cv2() -> Any:
    """OpenCV, or :class:`InvalidRequest` (code ``missing_dependency``) saying how to get it."""
    try:
        import cv2
    except ImportError as exc:
        raise InvalidRequest(MISSING_OPENCV, code="missing_dependency") from exc
    return cv2


def read_video(path: str | os.PathLike[str]) -> Generator[VideoFrame, None, None]:
    """The frames of the video at ``path``, in order; :class:`InvalidRequest` if it cannot be
    opened. The file stays open only while the iterator runs."""
    cv2 = import_cv2()
    if not Path(path).is_file():
        raise InvalidRequest(f"no video file at {path}", code="unreadable_video")
    capture = cv2.VideoCapture(os.fspath(path))
    try:
        if not capture.isOpened():
            raise InvalidRequest(f"OpenCV cannot open {path} as a video", code="unreadable_video")
        fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
        index = 0
        while True:
            ok, image = capture.read()
            if not ok:
                return
            position = capture.get(cv2.CAP_PROP_POS_MSEC)
            timestamp = position if position > 0 or fps <= 0 else index * 1000.0 / fps
            yield VideoFrame(index, float(timestamp), image)
            index += 1
    finally:
        capture.release()


def encode_jpeg(image: npt.NDArray[Any], quality: int = 95) -> bytes:
    """A BGR frame as JPEG bytes (OpenCV's encoder: the frame came from OpenCV already)."""
    cv2 = import_cv2()
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InvalidRequest("OpenCV could not encode a frame as JPEG", code="invalid_image")
    return bytes(data)


async def video_frames(path: str | os.PathLike[str]) -> AsyncGenerator[VideoFrame, None]:
    """:func:`read_video` without blocking the event loop: each frame is decoded in a thread."""
    frames = read_video(path)
    end = object()
    try:
        while (frame := await asyncio.to_thread(next, frames, end)) is not end:
            assert isinstance(frame, VideoFrame)
            yield frame
    finally:
        await asyncio.to_thread(frames.close)

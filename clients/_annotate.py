"""The ``track`` command's annotated video: each frame with its boxes, labels and track ids drawn,
written with OpenCV (imported only when a video is asked for)."""

from __future__ import annotations

import os
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from clients._video import import_cv2
from wire.schemas import StreamResult

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["AnnotatedVideo", "draw"]

_PALETTE = (
    (56, 56, 255),
    (151, 157, 255),
    (31, 112, 255),
    (29, 178, 255),
    (49, 210, 207),
    (10, 249, 72),
    (23, 204, 146),
    (134, 219, 61),
    (211, 188, 0),
    (255, 149, 0),
    (255, 56, 132),
    (199, 55, 255),
)
_UNTRACKED = (160, 160, 160)


def draw(image: npt.NDArray[Any], result: StreamResult) -> npt.NDArray[Any]:
    """A copy of the BGR ``image`` with each detection's box and ``#id class conf`` label; one
    colour per track id, grey while a track is unconfirmed."""
    cv2 = import_cv2()
    out = image.copy()
    thickness = max(1, round(min(out.shape[:2]) / 300))
    scale = max(0.35, min(out.shape[:2]) / 900)
    for det in result.detections:
        box = det.box_2d
        p1, p2 = (round(box.x_min), round(box.y_min)), (round(box.x_max), round(box.y_max))
        tid = det.track_id
        colour = _UNTRACKED if tid is None else _PALETTE[tid % len(_PALETTE)]
        cv2.rectangle(out, p1, p2, colour, thickness, cv2.LINE_AA)
        label = f"{'#' + str(tid) + ' ' if tid is not None else ''}{det.class_name} {det.confidence:.2f}"
        (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = p1[1] - h - base - 2 if p1[1] - h - base - 2 >= 0 else p1[1]
        cv2.rectangle(out, (p1[0], top), (p1[0] + w + 2, top + h + base + 2), colour, -1)
        cv2.putText(
            out,
            label,
            (p1[0] + 1, top + h + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return out


class AnnotatedVideo:
    """An mp4 (``mp4v``) written frame by frame; opened at the first frame (its size)."""

    def __init__(self, path: str | os.PathLike[str], fps: float) -> None:
        self.path = os.fspath(path)
        self.fps = fps if fps > 0 else 10.0
        self.frames = 0
        self._writer: Any = None
        self._size: tuple[int, int] | None = None

    def write(self, image: npt.NDArray[Any], result: StreamResult | None) -> None:
        """Append ``image``, annotated with ``result`` (as it is when there is none)."""
        cv2 = import_cv2()
        height, width = image.shape[:2]
        if self._writer is None:
            self._size = (width, height)
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(self.path, fourcc, self.fps, self._size)
            if not self._writer.isOpened():
                raise OSError(f"OpenCV cannot write a video to {self.path}")
        frame = draw(image, result) if result is not None else image
        if (width, height) != self._size:
            frame = cv2.resize(frame, self._size)
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

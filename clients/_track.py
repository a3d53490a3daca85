"""Video streams: a stream's frames sent one after another to ``POST /v1/streams/{id}/frames``,
each numbered with its ``seq``, their results yielded in order.

One frame is in flight at a time: the service tracks a stream's frames strictly in ``seq`` order
and refuses a frame not above the last it processed (409 ``stale_frame``), so a frame sent before
the previous one's answer could overtake it and turn it stale. The next frame is read and encoded
while the current one is in flight.

Retries (the client's: connection errors, timeouts, 429, 502, 503, 504) resend the same frame
with the same ``seq``. If the service had processed a try whose answer was lost (the connection
broke after the work, or the try timed out here but not there), the retry gets 409
``stale_frame``: the frame is in the stream's tracks, only its answer is gone. That frame is then
reported as a :class:`LostFrame` (to ``on_lost``, and in the log) and skipped, and the stream goes
on with the next frame. A 409 on a frame's first try is not that case (another sender feeds the
same stream id, or ``first_seq`` is behind the stream): it is raised.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TypeAlias

import httpx

from clients._http import RequestSpec, parse_answer
from clients._images import EncodedImage, ImageInput
from clients._video import encode_jpeg, video_frames
from clients.errors import ClientError, InvalidRequest
from wire.errors import STALE_FRAME
from wire.schemas import StreamResult, valid_stream_id

__all__ = ["FrameSource", "LostFrame", "TrackerValue", "track_stream"]

logger = logging.getLogger("clients")

FrameSource: TypeAlias = (
    "str | os.PathLike[str] | Iterable[ImageInput] | AsyncIterable[ImageInput]"
)
"""A video file's path, or frames: paths of images, encoded bytes or uint8 BGR numpy arrays."""

TrackerValue: TypeAlias = "str | int | float | bool"
Encode = Callable[[ImageInput, str | None], Awaitable[EncodedImage]]
Send = Callable[[RequestSpec, float | None], Awaitable[httpx.Response]]


@dataclass(frozen=True, slots=True)
class LostFrame:
    """A frame the service took into its stream whose answer never arrived (see the module)."""

    stream_id: str
    seq: int
    error: ClientError


@dataclass(frozen=True, slots=True)
class _Frame:
    seq: int
    upload: EncodedImage
    timestamp_ms: float | None


@dataclass(frozen=True, slots=True)
class TrackRequest:
    """What stays the same for every frame of one ``track`` call."""

    stream_id: str
    first_seq: int
    rate: float | None
    fields: Mapping[str, str]
    timeout: float | None
    on_lost: Callable[[LostFrame], None] | None


def track_fields(
    *,
    conf: float | None,
    iou: float | None,
    max_det: int | None,
    classes: Sequence[int | str] | None,
    tracker: str | None,
    tracker_options: Mapping[str, TrackerValue] | None,
) -> dict[str, str]:
    """The detection and tracker parameters as form fields (the tracker's, by their own names,
    are taken by the service when the stream starts)."""
    fields = {
        key: str(value)
        for key, value in {"conf": conf, "iou": iou, "max_det": max_det, "tracker": tracker}.items()
        if value is not None
    }
    if classes is not None:
        fields["classes"] = ",".join(str(c) for c in classes)
    for key, value in (tracker_options or {}).items():
        fields[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return fields


async def track_stream(
    request: TrackRequest,
    frames: FrameSource,
    encode: Encode,
    send: Send,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[None]],
) -> AsyncGenerator[StreamResult, None]:
    """The results of ``frames`` in ``request.stream_id``, in order (see the module)."""
    if not valid_stream_id(request.stream_id):
        raise InvalidRequest(
            f"a stream id is 1-128 characters of [A-Za-z0-9._-], not {request.stream_id!r}",
            code="validation_error",
        )
    if request.rate is not None and request.rate <= 0:
        raise ValueError("rate must be positive")
    path = f"/v1/streams/{request.stream_id}/frames"
    source = _encoded(frames, encode, request.first_seq)
    upcoming: asyncio.Task[_Frame] | None = None
    started = clock()
    try:
        upcoming = asyncio.ensure_future(anext(source))
        while True:
            try:
                frame = await upcoming
            except StopAsyncIteration:
                return
            upcoming = asyncio.ensure_future(anext(source))  # read the next while this one flies
            if request.rate is not None:
                due = started + (frame.seq - request.first_seq) / request.rate
                if (wait := due - clock()) > 0:
                    await sleep(wait)
            result = await _send_frame(request, path, frame, send)
            if result is not None:
                yield result
    finally:
        if upcoming is not None and not upcoming.done():
            upcoming.cancel()
            await asyncio.gather(upcoming, return_exceptions=True)
        await source.aclose()


async def _send_frame(
    request: TrackRequest, path: str, frame: _Frame, send: Send
) -> StreamResult | None:
    fields = {"seq": str(frame.seq), **request.fields}
    if frame.timestamp_ms is not None:
        fields["timestamp_ms"] = f"{frame.timestamp_ms:.3f}"
    spec = RequestSpec("POST", path, [("frame", frame.upload.as_file())], fields)
    try:
        response = await send(spec, request.timeout)
    except InvalidRequest as exc:
        if exc.code != STALE_FRAME.code or not exc.attempt or exc.attempt < 2:
            raise
        lost = LostFrame(request.stream_id, frame.seq, exc)
        logger.warning(
            "stream %s: frame %d was processed but its answer was lost (%s); going on",
            request.stream_id,
            frame.seq,
            exc,
        )
        if request.on_lost is not None:
            request.on_lost(lost)
        return None
    return parse_answer(StreamResult, response)


async def _encoded(
    frames: FrameSource, encode: Encode, first_seq: int
) -> AsyncGenerator[_Frame, None]:
    """Each frame, read or encoded once, with its ``seq`` (and, from a video, its time)."""
    seq = first_seq
    if isinstance(frames, str | os.PathLike):
        async for video_frame in video_frames(frames):
            data = await asyncio.to_thread(encode_jpeg, video_frame.image)
            upload = await encode(data, f"frame-{video_frame.index}.jpg")
            yield _Frame(seq, upload, video_frame.timestamp_ms)
            seq += 1
        return
    if isinstance(frames, AsyncIterable):
        async for image in frames:
            yield _Frame(seq, await encode(image, None), None)
            seq += 1
        return
    for image in frames:
        yield _Frame(seq, await encode(image, None), None)
        seq += 1

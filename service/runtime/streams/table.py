"""The streams this process owns: found, resumed or started by id, tracked in ``seq`` order,
bounded in number, removed when idle.

A frame comes in two steps, so that its detection (in the batches of whichever worker received it)
runs between them: ``admit`` takes its number (or refuses it as stale), ``track`` runs the
tracker once every earlier frame in flight has been, saves the stream's state (when Redis is
configured) and lets the next frame in; ``abandon`` gives a number up (a frame that failed).

A stream this process does not hold is resumed from its saved state when there is one (the
answer's ``stream_started`` false), else started. Lifecycle: ``start()`` loads the trackers' code
and starts the reaper, a background task that wakes when the oldest stream would expire and
removes the streams idle past the TTL; ``close()`` stops it and the tracker threads. Past
``max_streams`` a new stream is refused (503 ``too_many_streams``, ``Retry-After`` until the next
one expires); a known stream is always served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from service.runtime.streams.errors import StaleFrame, StreamNotFound, TooManyStreams
from service.runtime.streams.saved import SavedStreams
from service.runtime.streams.snapshot import StreamSnapshot, encode_snapshot
from service.runtime.streams.stream import Stream
from service.runtime.streams.tracking import TrackedBox, Tracker, TrackerSettings, preload
from wire.schemas import StreamSummary

if TYPE_CHECKING:
    from service.metrics import ServiceMetrics

__all__ = ["FrameDetections", "StreamTable", "Tracking"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FrameDetections:
    """What a tracker reads of a frame: xyxy boxes, scores, class ids; the frame's pixels when
    the stream's tracker needs them; an oriented-box model's rotated boxes (``xywhr``, the boxes
    then their bounds), which are what it tracks."""

    boxes: NDArray[np.floating[Any]]
    scores: NDArray[np.floating[Any]]
    classes: NDArray[np.integer[Any]]
    image: NDArray[np.uint8] | None
    timestamp_ms: float | None
    rotated: NDArray[np.floating[Any]] | None = None


@dataclass(frozen=True)
class Tracking:
    """A frame's tracking: the detections matched to confirmed tracks, and whether the frame
    started the stream."""

    boxes: list[TrackedBox]
    started: bool


class StreamTable:
    def __init__(self, metrics: ServiceMetrics, *, max_streams: int, ttl_s: float, threads: int,
                 saved: SavedStreams | None = None) -> None:
        self._metrics = metrics
        self._max = max_streams
        self._ttl = ttl_s
        self._saved = saved
        self._streams: dict[str, Stream] = {}
        self._opening: dict[str, asyncio.Future[Stream]] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tracker")
        self._added = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._work: set[asyncio.Future[Any]] = set()

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(preload)  # the first stream should not import Ultralytics' trackers
        self._reaper = asyncio.create_task(self._reap_forever(), name="stream-reaper")
        self._reaper.add_done_callback(_log_crash)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for stream_id in list(self._streams):
            self._end(stream_id, "closed")
        self._pool.shutdown(wait=True, cancel_futures=True)

    # the table --------------------------------------------------------------------------------
    def get(self, stream_id: str) -> Stream | None:
        return self._streams.get(stream_id)

    async def open(self, stream_id: str, settings: TrackerSettings, seq: int) -> Stream:
        """The stream of that id: held, resumed from its saved state (for frame ``seq``), or
        started with ``settings``."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        opening = self._opening.get(stream_id)
        if opening is not None:  # another frame of it is being resumed: share that
            return await asyncio.shield(opening)
        future: asyncio.Future[Stream] = asyncio.get_running_loop().create_future()
        self._opening[stream_id] = future
        try:
            stream = await self._resume_or_start(stream_id, settings, seq)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a frame waiting on it gets it, none is not an error
            raise
        finally:
            del self._opening[stream_id]
        future.set_result(stream)
        return stream

    async def _resume_or_start(self, stream_id: str, settings: TrackerSettings, seq: int) -> Stream:
        if len(self._streams) >= self._max:
            self._reap(time.monotonic())
        if len(self._streams) >= self._max:
            self._metrics.stream_refused.inc()
            raise TooManyStreams(f"this instance holds {self._max} streams, its limit; retry "
                                 "later or elsewhere", retry_after=self._next_expiry_in())
        saved = None if self._saved is None else await self._saved.load(stream_id)
        snap = None if saved is None else saved.for_frame(seq)
        if snap is None:
            stream = Stream(stream_id, Tracker(settings))
            log.info("stream started", extra={"stream": stream_id, "tracker": settings.tracker})
        else:
            stream = await self.in_thread(lambda: _resumed(stream_id, snap))
            log.info("stream resumed", extra={"stream": stream_id, "seq": snap.last_seq,
                                              "frames": snap.frames})
        self._streams[stream_id] = stream
        self._metrics.streams_active.set(len(self._streams))
        self._added.set()
        return stream

    async def admit(self, stream_id: str, seq: int, settings: TrackerSettings) -> Stream:
        """Take frame ``seq`` of the stream in (opening the stream), or refuse it as stale."""
        stream = await self.open(stream_id, settings, seq)
        try:
            stream.admit(seq)
        except StaleFrame:
            self._metrics.stream_frames_dropped.labels("stale").inc()
            raise
        return stream

    async def track(self, stream: Stream, seq: int, frame: FrameDetections) -> Tracking:
        """Track frame ``seq`` once every earlier frame in flight has been, then save the stream
        and let the next frame in. Runs to the end even when the caller leaves."""
        try:
            await stream.wait_turn(seq)
        except BaseException:
            self.abandon(stream, seq)
            raise
        work = asyncio.ensure_future(self._track(stream, seq, frame))
        self._work.add(work)
        work.add_done_callback(self._work.discard)
        return await asyncio.shield(work)

    async def _track(self, stream: Stream, seq: int, frame: FrameDetections) -> Tracking:
        tracked = False
        try:
            started = stream.frames == 0
            boxes, state = await self.in_thread(_tracking_step(
                stream, seq, frame, save=self._saved is not None))
            tracked = True
            if self._saved is not None and state is not None:
                await self._saved.save(stream.id, state, stream.saved)
                stream.saved = state
            self._metrics.stream_frames.inc()
            return Tracking(boxes, started)
        except BaseException:
            self._metrics.stream_frames_dropped.labels("failed").inc()
            raise
        finally:
            stream.leave(seq, tracked=tracked)
            self.count_tracks()

    def abandon(self, stream: Stream, seq: int) -> None:
        """Frame ``seq`` will not be tracked (its number counts as a gap)."""
        if seq in stream.in_flight:
            self._metrics.stream_frames_dropped.labels("failed").inc()
            stream.leave(seq, tracked=False)

    def next_seq(self, stream_id: str) -> int:
        """The number after every frame of the stream tracked or in flight (1 for a new stream)."""
        stream = self._streams.get(stream_id)
        return 1 if stream is None else stream.next_seq()

    async def remove(self, stream_id: str) -> None:
        if stream_id not in self._streams:
            raise StreamNotFound(f"no stream {stream_id!r} in this instance")
        self._end(stream_id, "deleted")
        if self._saved is not None:
            await self._saved.forget(stream_id)

    def drop(self, stream_id: str, reason: str) -> None:
        """Forget a stream this process no longer owns (its saved state stays)."""
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.busy:
            self._end(stream_id, reason)

    def ids(self) -> list[str]:
        return list(self._streams)

    def summaries(self) -> list[StreamSummary]:
        return [s.summary() for s in self._streams.values()]

    def count_tracks(self) -> None:
        self._metrics.stream_tracks.set(sum(s.tracks for s in self._streams.values()))

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """Tracker work, off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn)

    # expiry -----------------------------------------------------------------------------------
    def _end(self, stream_id: str, reason: str) -> None:
        del self._streams[stream_id]
        self._metrics.streams_active.set(len(self._streams))
        self._metrics.streams_ended.labels(reason).inc()
        self.count_tracks()
        log.info("stream ended", extra={"stream": stream_id, "reason": reason})

    def _reap(self, now: float) -> None:
        for stream in list(self._streams.values()):
            if not stream.busy and now - stream.last_seen >= self._ttl:
                self._end(stream.id, "expired")

    def _next_expiry_in(self) -> float:
        now = time.monotonic()
        oldest = min((s.last_seen for s in self._streams.values()), default=now)
        return max(1.0, oldest + self._ttl - now)

    async def _reap_forever(self) -> None:
        while True:
            if not self._streams:
                self._added.clear()
                await self._added.wait()
                continue
            # a stream's last_seen only grows, so none expires before the oldest idle one; a busy
            # stream is seen again when its frame is done, a TTL or more before it can expire
            now = time.monotonic()
            idle = [s.last_seen for s in self._streams.values() if not s.busy]
            await asyncio.sleep(max(0.0, min(idle) + self._ttl - now) if idle else self._ttl)
            self._reap(time.monotonic())


def _resumed(stream_id: str, snap: StreamSnapshot) -> Stream:
    return Stream(stream_id, Tracker.restore(snap.tracker), last_seq=snap.last_seq,
                  frames=snap.frames, saved=encode_snapshot(snap))


def _tracking_step(stream: Stream, seq: int, frame: FrameDetections, *, save: bool
                   ) -> Callable[[], tuple[list[TrackedBox], bytes | None]]:
    seq_gap = stream.gap_before(seq)
    frames = stream.frames

    def step() -> tuple[list[TrackedBox], bytes | None]:
        tracker = stream.tracker
        clock_gap = tracker.tick(frame.timestamp_ms)  # the stream's own clock wins
        gap = seq_gap if clock_gap is None else clock_gap
        if gap > 0:
            tracker.skip(gap)
        tracked = tracker.update(frame.boxes, frame.scores, frame.classes, frame.image,
                                 frame.rotated)
        stream.tracks = tracker.alive()
        state = (encode_snapshot(StreamSnapshot(seq, frames + 1, tracker.export()))
                 if save else None)
        return tracked, state

    return step


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the stream reaper stopped", exc_info=task.exception())

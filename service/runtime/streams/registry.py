"""The streams of one process: found or started by id, bounded in number, removed when idle.

Lifecycle: ``start()`` loads the trackers' code and starts the reaper, a background task that wakes
when the oldest stream would expire and removes the streams idle past the TTL; ``close()`` stops it
and the tracker threads. Past ``max_streams``, a new stream is refused (503 ``too_many_streams``,
``Retry-After`` until the next one expires); a known stream is always served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

from service.runtime.streams.errors import StreamNotFound, TooManyStreams
from service.runtime.streams.stream import Stream
from service.runtime.streams.tracking import Tracker, TrackerSettings, preload
from wire.schemas import StreamSummary

if TYPE_CHECKING:
    from service.metrics import ServiceMetrics

__all__ = ["StreamRegistry"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class StreamRegistry:
    def __init__(self, metrics: ServiceMetrics, *, max_streams: int, ttl_s: float, threads: int) -> None:
        self._metrics = metrics
        self._max = max_streams
        self._ttl = ttl_s
        self._streams: dict[str, Stream] = {}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tracker")
        self._added = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None

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
    def get_or_start(self, stream_id: str, settings: TrackerSettings) -> Stream:
        """The stream of that id, started (with ``settings``) when this process does not hold it."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if len(self._streams) >= self._max:
            self._reap(time.monotonic())
        if len(self._streams) >= self._max:
            self._metrics.stream_refused.inc()
            raise TooManyStreams(f"this instance holds {self._max} streams, its limit; retry "
                                 "later or elsewhere", retry_after=self._next_expiry_in())
        stream = Stream(stream_id, Tracker(settings))
        self._streams[stream_id] = stream
        self._metrics.streams_active.set(len(self._streams))
        self._added.set()
        log.info("stream started", extra={"stream": stream_id, "tracker": settings.tracker})
        return stream

    def next_seq(self, stream_id: str) -> int:
        """The number after every frame of the stream tracked or in flight (1 for a new stream)."""
        stream = self._streams.get(stream_id)
        return 1 if stream is None else stream.next_seq()

    def remove(self, stream_id: str) -> None:
        if stream_id not in self._streams:
            raise StreamNotFound(f"no stream {stream_id!r} in this instance")
        self._end(stream_id, "deleted")

    def summaries(self) -> list[StreamSummary]:
        return [s.summary() for s in self._streams.values()]

    def holds(self, stream: Stream) -> bool:
        return self._streams.get(stream.id) is stream

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

def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the stream reaper stopped", exc_info=task.exception())

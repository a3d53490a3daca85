"""One video stream's state: its tracker and the order its frames are tracked in.

Frames are detected concurrently (they join the shared batches as they come) but tracked strictly
in ``seq`` order: a frame waits for every frame of its stream with a lower ``seq`` that is still in
flight. A frame whose ``seq`` is not above the last one tracked (or is already in flight) is stale.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from service.runtime.streams.errors import StaleFrame
from service.runtime.streams.tracking import Tracker
from wire.schemas import StreamSummary

__all__ = ["Stream"]


class Stream:
    def __init__(self, stream_id: str, tracker: Tracker, *, last_seq: int | None = None,
                 frames: int = 0, saved: bytes = b"") -> None:
        self.id = stream_id
        self.tracker = tracker
        self.last_seq = last_seq  # the last frame tracked
        self.frames = frames  # frames tracked (here and, resumed, where it was before)
        self.tracks = tracker.alive()  # confirmed tracks in the last frame
        self.saved = saved  # the state saved after the last frame (b"": none yet)
        self.last_seen = time.monotonic()
        self.last_seen_at = datetime.now(UTC)
        self._in_flight: set[int] = set()
        self._left = asyncio.Event()  # set, and replaced, whenever a frame leaves

    @property
    def needs_image(self) -> bool:
        """Whether its tracker reads the frame's pixels (BoT-SORT's motion compensation)."""
        s = self.tracker.settings
        return s.tracker == "botsort" and s.gmc_method != "none"

    @property
    def busy(self) -> bool:
        return bool(self._in_flight)

    @property
    def in_flight(self) -> frozenset[int]:
        return frozenset(self._in_flight)

    def touch(self) -> None:
        self.last_seen = time.monotonic()
        self.last_seen_at = datetime.now(UTC)

    def next_seq(self) -> int:
        """The number after every frame tracked or in flight."""
        known = [*self._in_flight, *(() if self.last_seq is None else (self.last_seq,))]
        return max(known) + 1 if known else 1

    def admit(self, seq: int) -> None:
        """Take frame ``seq`` in, or refuse it as stale."""
        if self.last_seq is not None and seq <= self.last_seq:
            raise StaleFrame(f"stream {self.id!r} already tracked frame {self.last_seq}; "
                             f"frame {seq} is stale (seq must increase)")
        if seq in self._in_flight:
            raise StaleFrame(f"frame {seq} of stream {self.id!r} is already being processed")
        self._in_flight.add(seq)
        self.touch()

    async def wait_turn(self, seq: int) -> None:
        """Until no frame of a lower ``seq`` is in flight."""
        while min(self._in_flight) < seq:
            await self._left.wait()

    def leave(self, seq: int, *, tracked: bool) -> None:
        """Frame ``seq`` is done: tracked, or given up (its number then counts as a gap)."""
        self._in_flight.discard(seq)
        if tracked:
            self.last_seq = seq
            self.frames += 1
        self.touch()
        self._left.set()
        self._left = asyncio.Event()

    def gap_before(self, seq: int) -> int:
        """Frames missing between the last one tracked and ``seq``."""
        return 0 if self.last_seq is None else seq - self.last_seq - 1

    def summary(self) -> StreamSummary:
        return StreamSummary(id=self.id, frames=self.frames, tracks=self.tracks,
                             last_seen=self.last_seen_at)

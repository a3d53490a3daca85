"""A stream's own clock: its frame rate and its gaps from the frames' ``timestamp_ms``.

The trackers count frames; a stream's caller counts milliseconds. With timestamps, the frame rate
is the median of the recent intervals (each interval divided by the frames it spans, so a gap does
not skew it), and a gap is the frames that should have come between two timestamps. Without them
(or before the second one) the nominal rate of Ultralytics' trackers, 30 frames/s, holds.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["NOMINAL_FPS", "StreamClock"]

NOMINAL_FPS = 30.0  # the rate a tracker's frame counts (track_buffer) are meant at
_WINDOW = 8  # intervals the rate is the median of
_MIN_FPS, _MAX_FPS = 0.1, 1000.0


@dataclass
class StreamClock:
    last_ms: float | None = None  # the last frame's timestamp
    intervals: deque[float] = field(default_factory=lambda: deque(maxlen=_WINDOW))

    @property
    def fps(self) -> float:
        """The stream's frame rate, from its own timestamps (nominal until two were seen)."""
        if not self.intervals:
            return NOMINAL_FPS
        return min(_MAX_FPS, max(_MIN_FPS, 1000.0 / statistics.median(self.intervals)))

    def advance(self, timestamp_ms: float) -> int | None:
        """Take the next frame's timestamp: the frames missing since the last one, or None when
        the clock cannot tell (the first timestamp, or one not after the last)."""
        last, self.last_ms = self.last_ms, timestamp_ms
        if last is None or timestamp_ms <= last:
            return None
        dt = timestamp_ms - last
        if not self.intervals:
            self.intervals.append(dt)
            return 0
        gap = max(0, round(dt / statistics.median(self.intervals)) - 1)
        self.intervals.append(dt / (gap + 1))
        return gap

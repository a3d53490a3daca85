"""One ticker that times everything in flight: per-try timeouts, deadlines, a WebSocket's idle
timeout. A timer per request would put a heap entry per request on the event loop; instead
whatever is armed is checked every ``TICK`` seconds, which is all the resolution those
timeouts need.
"""

from __future__ import annotations

import asyncio
from math import inf as INF
from time import monotonic
from typing import Protocol

__all__ = ["INF", "TICK", "Ticker", "Timed"]

TICK = 0.02  # resolution of per-try timeouts, deadlines and idle timeouts


class Timed(Protocol):
    """Something the ticker times: an exchange, a tunnel."""

    timer_at: float  # when ``on_timer`` is due; INF while not armed

    def on_timer(self) -> None:
        """Called once ``timer_at`` has passed (disarmed first: re-arm to be called again)."""
        ...


class Ticker:
    """Calls ``on_timer`` of each armed :class:`Timed` once its ``timer_at`` has passed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._armed: set[Timed] = set()  # bounded by what is in flight (max_inflight, max_websockets)
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, timed: Timed, when: float) -> None:
        """``timed.on_timer`` is to be called at ``when`` (``monotonic()`` seconds), instead of
        any earlier arming."""
        if timed.timer_at == INF:
            self._armed.add(timed)
            if self._handle is None:
                self._handle = self.loop.call_later(TICK, self._tick)
        timed.timer_at = when

    def disarm(self, timed: Timed) -> None:
        timed.timer_at = INF
        self._armed.discard(timed)

    def _tick(self) -> None:
        now = monotonic()
        for timed in [t for t in self._armed if t.timer_at <= now]:
            if timed.timer_at <= now:  # still due: an earlier one may have ended or re-armed it
                self.disarm(timed)
                timed.on_timer()
        self._handle = self.loop.call_later(TICK, self._tick) if self._armed else None

    def close(self) -> None:
        """Stops ticking (everything timed has ended or been cut by then)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for timed in self._armed:
            timed.timer_at = INF
        self._armed.clear()

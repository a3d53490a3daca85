"""Streams' tracker state in Redis, so that a stream outlives the process that held it.

After each frame its owner saves the stream (:mod:`.snapshot`), and a process that receives a
stream it does not hold resumes it from there. Beside the state after the last frame, the value
keeps the state before it: a caller whose answer was lost with a killed process sends that frame
again, and it is tracked again from where it was (its answer as the lost one).

    value = u32 length of CURRENT | CURRENT | PREVIOUS (empty: the frame started the stream)

Redis failing fails no frame: the store's circuit opens (:mod:`service.shared.store`), streams go
on in their process, and this logs it once per outage.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from service.runtime.streams.snapshot import SnapshotError, StreamSnapshot, decode_snapshot
from service.shared import SharedStore, StoreUnavailable

__all__ = ["Saved", "SavedStreams"]

log = logging.getLogger(__name__)
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True)
class Saved:
    """A stream's saved state: after its last frame, and before it (None: that frame started it)."""

    current: StreamSnapshot
    previous: StreamSnapshot | None

    def for_frame(self, seq: int) -> StreamSnapshot | None:
        """The state frame ``seq`` goes on from: the last one, or the one before when ``seq`` is
        the last frame again (its answer was lost); None: the stream starts with it."""
        return self.previous if seq == self.current.last_seq else self.current


class SavedStreams:
    def __init__(self, store: SharedStore, ttl_s: float) -> None:
        self._store = store
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._down = False  # logged for this outage

    def _key(self, stream_id: str) -> str:
        return self._store.key("stream", stream_id)

    async def load(self, stream_id: str) -> Saved | None:
        """The stream's saved state, or None (none saved, unreadable, or Redis unavailable)."""
        try:
            data = await self._store.call("stream_load", lambda r: r.get(self._key(stream_id)))
        except StoreUnavailable:
            self._outage()
            return None
        self._up()
        if not isinstance(data, bytes) or not data:
            return None
        try:
            (size,) = _LENGTH.unpack_from(data, 0)
            current = decode_snapshot(data[4:4 + size])
            rest = data[4 + size:]
            return Saved(current, decode_snapshot(rest) if rest else None)
        except (SnapshotError, struct.error) as exc:
            log.warning("a stream's saved state is unreadable; it starts afresh",
                        extra={"stream": stream_id, "error": str(exc)})
            return None

    async def save(self, stream_id: str, current: bytes, previous: bytes) -> None:
        value = b"".join((_LENGTH.pack(len(current)), current, previous))
        try:
            await self._store.call("stream_save", lambda r: r.set(
                self._key(stream_id), value, px=self._ttl_ms))
        except StoreUnavailable:
            self._outage()
            return
        self._up()

    async def forget(self, stream_id: str) -> None:
        try:
            await self._store.call("stream_delete", lambda r: r.delete(self._key(stream_id)))
        except StoreUnavailable:
            self._outage()

    def _outage(self) -> None:
        if not self._down:
            self._down = True
            log.warning("streams' state is not saved while Redis is unavailable; streams go on "
                        "in their process")

    def _up(self) -> None:
        if self._down:
            self._down = False
            log.warning("streams' state saved in Redis again")

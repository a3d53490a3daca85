"""A stream's state as bytes, for Redis: compact, versioned, and never a pickle.

    b"YST2" | u32 header length | header (JSON: tracker settings, counters, clock) | tracks

The tracks are :data:`~.tracking.TRACK_RECORD` rows, little-endian, as NumPy lays them out (651
bytes a track, the Kalman covariance most of it). Decoding checks the magic, the lengths and the
settings, and raises :class:`SnapshotError` on anything else: a reader never runs what it reads.
It still reads ``YST1``, saved before tracks had an angle (their rows lack the last field,
``angle``, which reads as NaN: no track of rotated boxes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import ValidationError

from service.runtime.streams.tracking import TRACK_RECORD, TrackerSettings, TrackerState

__all__ = ["SnapshotError", "StreamSnapshot", "decode_snapshot", "encode_snapshot"]

_MAGIC = b"YST2"
# the rows of YST1, as they were: TRACK_RECORD without its angle
_RECORD_V1 = np.dtype([
    ("track_id", "<i8"), ("pools", "u1"), ("state", "u1"), ("activated", "u1"),
    ("score", "<f4"), ("cls", "<f4"), ("idx", "<f8"), ("tracklet_len", "<i8"),
    ("start_frame", "<i8"), ("frame_id", "<i8"), ("tlwh", "<f4", (4,)),
    ("mean", "<f8", (8,)), ("covariance", "<f8", (8, 8)),
])
_RECORDS = {b"YST1": _RECORD_V1, _MAGIC: TRACK_RECORD}
_LENGTH = struct.Struct("<I")


class SnapshotError(ValueError):
    """Bytes that are not a stream's state as any version of this module wrote it."""


@dataclass
class StreamSnapshot:
    """A stream as saved after one of its frames."""

    last_seq: int  # the frame it was saved after
    frames: int  # frames tracked
    tracker: TrackerState


def encode_snapshot(snap: StreamSnapshot) -> bytes:
    t = snap.tracker
    header = orjson.dumps({
        "settings": t.settings.model_dump(exclude_none=True), "frame_id": t.frame_id,
        "next_id": t.next_id, "last_seq": snap.last_seq, "frames": snap.frames,
        "clock_ms": t.clock_ms, "intervals": t.intervals, "tracks": len(t.tracks)})
    rows = np.ascontiguousarray(t.tracks, TRACK_RECORD).tobytes()
    return b"".join((_MAGIC, _LENGTH.pack(len(header)), header, rows))


def decode_snapshot(data: bytes) -> StreamSnapshot:
    record = _RECORDS.get(data[:4])
    if record is None or len(data) < 8:
        raise SnapshotError("not a stream state (bad magic)")
    (size,) = _LENGTH.unpack_from(data, 4)
    try:
        h = orjson.loads(data[8:8 + size])
        settings = TrackerSettings.model_validate(h["settings"])
        count = int(h["tracks"])
        rows = data[8 + size:]
        if count < 0 or len(rows) != count * record.itemsize:
            raise SnapshotError(f"{len(rows)} bytes of tracks for {count} tracks")
        tracks = _upgraded(np.frombuffer(rows, record))
        clock = None if h["clock_ms"] is None else float(h["clock_ms"])
        state = TrackerState(settings, int(h["frame_id"]), int(h["next_id"]), tracks, clock,
                             [float(x) for x in h["intervals"]])
        return StreamSnapshot(int(h["last_seq"]), int(h["frames"]), state)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ValidationError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"not a stream state: {exc}") from exc


def _upgraded(rows: NDArray[np.void]) -> NDArray[np.void]:
    """Rows of any version read as :data:`TRACK_RECORD` rows (a field they lack: NaN)."""
    if rows.dtype == TRACK_RECORD:
        return rows.copy()
    out = np.zeros(len(rows), TRACK_RECORD)
    out["angle"] = np.nan
    for name in rows.dtype.names or ():
        out[name] = rows[name]
    return out

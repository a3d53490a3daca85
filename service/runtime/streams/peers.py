"""The worker processes of one service talking about streams, over Unix sockets.

A worker that receives a frame of a stream another worker owns detects it in its own batches and
hands the owner only the tracking step: ``admit`` (the frame's number, before detection, so that
the owner orders it among the stream's frames from every worker), then ``track`` (the detections,
and the pixels when the owner's tracker reads them) or ``abandon``. ``next_seq``, ``list`` and
``remove`` serve the WebSocket feed, ``GET /v1/streams`` and ``DELETE``.

A message is ``u32 header length | u32 body length | header (JSON) | body``; a reply's header
holds ``error`` (the code, message and Retry-After of a stream error) when the call failed. One
call at a time per connection; a client keeps a pool of them per peer (a frame's ``track`` may
come on another connection than its ``admit``). A connection that closes with frames it admitted
not yet tracked gives those frames up, so a worker dying mid-frame never blocks its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.errors import ServiceError
from service.runtime.streams.errors import StaleFrame, StreamNotFound, TooManyStreams
from service.runtime.streams.table import FrameDetections, StreamTable, Tracking
from service.runtime.streams.tracking import TrackedBox, TrackerSettings
from wire import errors as codes

__all__ = ["PeerClient", "PeerGone", "PeerServer"]

log = logging.getLogger(__name__)
_FRAME = struct.Struct("<II")
_MAX_MESSAGE = 256 * 1024 * 1024


class PeerGone(Exception):
    """The peer's socket refused or dropped the call: that worker is gone."""


async def _read(reader: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    head = await reader.readexactly(_FRAME.size)
    size, body_size = _FRAME.unpack(head)
    if size + body_size > _MAX_MESSAGE:
        raise ValueError("peer message too large")
    header = orjson.loads(await reader.readexactly(size))
    body = await reader.readexactly(body_size) if body_size else b""
    return header, body


def _message(header: dict[str, Any], body: bytes = b"") -> bytes:
    encoded = orjson.dumps(header)
    return b"".join((_FRAME.pack(len(encoded), len(body)), encoded, body))


# -- detections on the wire ----------------------------------------------------------------------
def pack_frame(frame: FrameDetections) -> tuple[dict[str, Any], bytes]:
    """As the tracker reads them: float32 boxes, scores, classes and rotated boxes (an
    oriented-box model's), uint8 pixels."""
    boxes = np.ascontiguousarray(frame.boxes, np.float32).reshape(-1, 4)
    parts = [boxes.tobytes(), np.ascontiguousarray(frame.scores, np.float32).tobytes(),
             np.ascontiguousarray(frame.classes, np.float32).tobytes()]
    if frame.rotated is not None:
        parts.append(np.ascontiguousarray(frame.rotated, np.float32).reshape(-1, 5).tobytes())
    shape = None
    if frame.image is not None:
        image = np.ascontiguousarray(frame.image, np.uint8)
        shape = list(image.shape)
        parts.append(image.tobytes())
    return {"n": len(boxes), "rotated": frame.rotated is not None, "shape": shape,
            "timestamp_ms": frame.timestamp_ms}, b"".join(parts)


def unpack_frame(header: dict[str, Any], body: bytes) -> FrameDetections:
    n = int(header["n"])
    columns = 11 if header.get("rotated") else 6  # xyxy, score, class (, xywhr)
    values = np.frombuffer(body, np.float32, count=columns * n)
    boxes, scores, classes = values[:4 * n].reshape(n, 4), values[4 * n:5 * n], values[5 * n:6 * n]
    rotated = values[6 * n:].reshape(n, 5) if columns == 11 else None
    image = None
    if header.get("shape") is not None:
        image = np.frombuffer(body, np.uint8, offset=4 * columns * n).reshape(header["shape"])
    return FrameDetections(boxes, scores, classes.astype(np.int64), image, header.get("timestamp_ms"),
                           rotated)


def _error_header(exc: ServiceError) -> dict[str, Any]:
    return {"error": {"code": exc.code, "message": str(exc),
                      "retry_after": getattr(exc, "retry_after", None)}}


def _raise_error(error: dict[str, Any]) -> None:
    code, message = error["code"], error["message"]
    if code == codes.STALE_FRAME.code:
        raise StaleFrame(message)
    if code == codes.STREAM_NOT_FOUND.code:
        raise StreamNotFound(message)
    if code == codes.TOO_MANY_STREAMS.code:
        raise TooManyStreams(message, retry_after=float(error.get("retry_after") or 1.0))
    raise ServiceError(f"the stream's owner failed: {message}")


# -- the owner's side ---------------------------------------------------------------------------
class PeerServer:
    """This worker's streams, served to the other workers on ``path``."""

    def __init__(self, table: StreamTable, path: Path) -> None:
        self._table = table
        self._path = path
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._admitted: dict[tuple[str, int], int] = {}  # (stream, seq) -> the admitting connection

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)  # a dead worker's, in this slot
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        connection = id(task)
        try:
            while True:
                try:
                    header, body = await _read(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                try:
                    reply, payload = await self._handle(header, body, connection)
                except ServiceError as exc:
                    reply, payload = _error_header(exc), b""
                except Exception as exc:
                    log.exception("a peer's stream call failed", extra={"op": header.get("op")})
                    reply, payload = {"error": {"code": "internal_error", "message": repr(exc)}}, b""
                writer.write(_message(reply, payload))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            self._connections.discard(task)
            orphans = [key for key, by in self._admitted.items() if by == connection]
            for stream_id, seq in orphans:  # the caller is gone: its frames will not come
                del self._admitted[(stream_id, seq)]
                stream = self._table.get(stream_id)
                if stream is not None:
                    self._table.abandon(stream, seq)
            writer.close()

    async def _handle(self, h: dict[str, Any], body: bytes, connection: int
                      ) -> tuple[dict[str, Any], bytes]:
        admitted = self._admitted
        op, stream_id = h["op"], h.get("stream", "")
        if op == "admit":
            settings = TrackerSettings.model_validate(h["settings"])
            opened = await self._table.admit(stream_id, h["seq"], settings)
            admitted[(stream_id, h["seq"])] = connection
            return {"needs_image": opened.needs_image}, b""
        if op == "track":
            key = (stream_id, h["seq"])
            stream = self._table.get(stream_id)
            if key not in admitted or stream is None:
                raise ServiceError(f"frame {h['seq']} of {stream_id!r} was not admitted")
            del admitted[key]
            tracking = await self._table.track(stream, h["seq"], unpack_frame(h, body))
            return tracking_reply(tracking), b""
        if op == "abandon":
            key = (stream_id, h["seq"])
            stream = self._table.get(stream_id)
            if admitted.pop(key, None) is not None and stream is not None:
                self._table.abandon(stream, h["seq"])
            return {}, b""
        if op == "next_seq":
            return {"seq": self._table.next_seq(stream_id)}, b""
        if op == "list":
            return {"streams": [s.model_dump(mode="json") for s in self._table.summaries()]}, b""
        if op == "remove":
            await self._table.remove(stream_id)
            return {}, b""
        raise ServiceError(f"unknown peer call {op!r}")


# -- the caller's side ---------------------------------------------------------------------------
class PeerClient:
    """Calls to one peer worker, over a small pool of connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._closed = False

    async def call(self, header: dict[str, Any], body: bytes = b"", *,
                   orphaned: Callable[[dict[str, Any]], None] | None = None,
                   ) -> tuple[dict[str, Any], bytes]:
        """One call, carried to its end even when the caller leaves (the peer acts on it all the
        same, and the connection stays usable): then ``orphaned`` gets the reply."""
        task = asyncio.ensure_future(self._call(header, body))
        try:
            reply, payload = await asyncio.shield(task)
        except asyncio.CancelledError:
            if orphaned is not None:
                task.add_done_callback(lambda t: None if t.cancelled() or t.exception() is not None
                                       else orphaned(t.result()[0]))
            raise
        if "error" in reply:
            _raise_error(reply["error"])
        return reply, payload

    def call_later(self, header: dict[str, Any], on_error: Callable[[BaseException], None]) -> None:
        """A call nobody waits for (``abandon``)."""
        task = asyncio.ensure_future(self._call(header, b""))
        task.add_done_callback(lambda t: None if t.cancelled() or t.exception() is None
                               else on_error(t.exception()))  # type: ignore[arg-type]

    async def _call(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            if self._idle:
                reader, writer = self._idle.pop()
            else:
                reader, writer = await asyncio.open_unix_connection(str(self.path))
        except OSError as exc:
            raise PeerGone(f"{self.path.name}: {exc}") from exc
        try:
            writer.write(_message(header, body))
            await writer.drain()
            reply = await _read(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            writer.close()
            raise PeerGone(f"{self.path.name}: {exc!r}") from exc
        except BaseException:
            writer.close()
            raise
        if self._closed:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return reply

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()


def tracking_reply(tracking: Tracking) -> dict[str, Any]:
    """The owner's reply to ``track``: per tracked box its index, track id, box and (an oriented
    box's) rotated box."""
    rows = [[b.index, b.track_id, *b.box, *(b.rotated or ())] for b in tracking.boxes]
    return {"boxes": rows, "started": tracking.started}


def tracking_from(reply: dict[str, Any]) -> Tracking:
    """The tracking a ``track`` reply (:func:`tracking_reply`) carries."""
    boxes = [TrackedBox(int(r[0]), int(r[1]), (float(r[2]), float(r[3]), float(r[4]), float(r[5])),
                        None if len(r) == 6 else
                        (float(r[6]), float(r[7]), float(r[8]), float(r[9]), float(r[10])))
             for r in reply["boxes"]]
    return Tracking(boxes, bool(reply["started"]))

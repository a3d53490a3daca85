"""The streams of a service, whatever its number of worker processes: each stream has one owner.

In one process (``serve``, ``--workers 1``) this process owns every stream. Under gunicorn
(``--workers N``), the owner is a function of the stream's id and the live workers
(:mod:`.ownership`); a frame reaching another worker is detected there and only its tracking step
goes to the owner (:mod:`.peers`), admitted before detection so that the owner tracks the frames of
a stream in ``seq`` order whichever workers received them. When the live workers change, a worker
forgets the streams it no longer owns (their new owner resumes them from Redis when configured).
A call to an owner that died is made again to the stream's next owner.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.runtime.streams.ownership import Peer, Workers
from service.runtime.streams.peers import PeerClient, PeerGone, PeerServer, pack_frame, tracking_from
from service.runtime.streams.saved import SavedStreams
from service.runtime.streams.stream import Stream
from service.runtime.streams.table import FrameDetections, StreamTable, Tracking
from service.runtime.streams.tracking import TrackerSettings
from service.workers import PEER_DIR_ENV, WORKER_SLOT_ENV, socket_path
from wire.schemas import StreamSummary

if TYPE_CHECKING:
    from service.metrics import ServiceMetrics

__all__ = ["PeerSetup", "StreamRegistry", "Ticket"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerSetup:
    """Where this worker and its peers listen (from the gunicorn master)."""

    folder: Path
    slot: int

    @classmethod
    def from_env(cls) -> PeerSetup | None:
        """This worker's, under gunicorn (the master sets them before the fork), else None."""
        folder, slot = os.environ.get(PEER_DIR_ENV), os.environ.get(WORKER_SLOT_ENV)
        if not folder or slot is None:
            return None
        return cls(Path(folder), int(slot))


@dataclass
class Ticket:
    """A frame admitted by its stream's owner, to be tracked or abandoned there."""

    stream_id: str
    seq: int
    settings: TrackerSettings
    needs_image: bool
    stream: Stream | None = None  # this process owns it
    peer: Peer | None = None  # that worker does


class StreamRegistry:
    def __init__(self, metrics: ServiceMetrics, *, max_streams: int, ttl_s: float, threads: int,
                 saved: SavedStreams | None = None, peers: PeerSetup | None = None) -> None:
        self.table = StreamTable(metrics, max_streams=max_streams, ttl_s=ttl_s, threads=threads,
                                 saved=saved)
        self._workers = None if peers is None else Workers(peers.folder, peers.slot)
        self._server = (None if peers is None
                        else PeerServer(self.table, socket_path(peers.folder, peers.slot)))
        self._clients: dict[tuple[int, int], PeerClient] = {}
        self._live: tuple[int, ...] = ()

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.table.start()
        if self._server is not None:
            await self._server.start()

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
        for client in self._clients.values():
            client.close()
        await self.table.close()

    # owners -----------------------------------------------------------------------------------
    def _owner(self, stream_id: str) -> Peer | None:
        """The worker that owns the stream, or None: this one."""
        if self._workers is None:
            return None
        live = self._workers.live()
        slots = tuple(sorted(live))
        if slots != self._live:
            self._live = slots
            self._forget_moved(live)
        owner = self._workers.owner(stream_id, live)
        return None if owner.slot == self._workers.slot else owner

    def _forget_moved(self, live: dict[int, Peer]) -> None:
        assert self._workers is not None
        for stream_id in self.table.ids():
            if self._workers.owner(stream_id, live).slot != self._workers.slot:
                self.table.drop(stream_id, "moved")

    def _client(self, peer: Peer) -> PeerClient:
        key = (peer.slot, peer.inode)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = PeerClient(peer.path)
        return client

    def _gone(self, peer: Peer, exc: PeerGone) -> None:
        assert self._workers is not None
        log.warning("a worker holding streams is gone; its streams move",
                    extra={"slot": peer.slot, "error": str(exc)})
        self._workers.mark_dead(peer)
        client = self._clients.pop((peer.slot, peer.inode), None)
        if client is not None:
            client.close()

    # a frame ----------------------------------------------------------------------------------
    async def admit(self, stream_id: str, seq: int, settings: TrackerSettings) -> Ticket:
        """Frame ``seq`` of the stream, taken in by its owner (or refused as stale)."""
        while True:
            peer = self._owner(stream_id)
            if peer is None:
                stream = await self.table.admit(stream_id, seq, settings)
                return Ticket(stream_id, seq, settings, stream.needs_image, stream=stream)
            client = self._client(peer)

            def orphaned(reply: dict[str, Any], client: PeerClient = client) -> None:
                if "error" not in reply:  # admitted, and its caller left: give the number up
                    client.call_later({"op": "abandon", "stream": stream_id, "seq": seq},
                                      lambda exc: None)

            try:
                reply, _ = await client.call({
                    "op": "admit", "stream": stream_id, "seq": seq,
                    "settings": settings.model_dump(exclude_none=True)}, orphaned=orphaned)
            except PeerGone as exc:
                self._gone(peer, exc)
                continue
            return Ticket(stream_id, seq, settings, bool(reply["needs_image"]), peer=peer)

    async def track(self, ticket: Ticket, frame: FrameDetections) -> Tracking:
        """Track an admitted frame at its owner; if the owner died meanwhile, at the next one."""
        while True:
            if ticket.stream is not None:
                return await self.table.track(ticket.stream, ticket.seq, frame)
            assert ticket.peer is not None
            header, body = pack_frame(frame if ticket.needs_image else _without_image(frame))
            try:
                reply, _ = await self._client(ticket.peer).call(
                    {"op": "track", "stream": ticket.stream_id, "seq": ticket.seq, **header}, body)
                return tracking_from(reply)
            except PeerGone as exc:
                self._gone(ticket.peer, exc)
            again = await self.admit(ticket.stream_id, ticket.seq, ticket.settings)
            ticket.stream, ticket.peer, ticket.needs_image = again.stream, again.peer, again.needs_image

    def abandon(self, ticket: Ticket) -> None:
        """An admitted frame will not be tracked (it failed, or its caller left)."""
        if ticket.stream is not None:
            self.table.abandon(ticket.stream, ticket.seq)
        elif ticket.peer is not None:
            self._client(ticket.peer).call_later(
                {"op": "abandon", "stream": ticket.stream_id, "seq": ticket.seq},
                lambda exc: log.debug("abandon not delivered", exc_info=exc))

    # the streams ------------------------------------------------------------------------------
    async def next_seq(self, stream_id: str) -> int:
        """The number after every frame of the stream tracked or in flight (1 for a new one)."""
        while (peer := self._owner(stream_id)) is not None:
            try:
                reply, _ = await self._client(peer).call({"op": "next_seq", "stream": stream_id})
                return int(reply["seq"])
            except PeerGone as exc:
                self._gone(peer, exc)
        return self.table.next_seq(stream_id)

    async def remove(self, stream_id: str) -> None:
        while (peer := self._owner(stream_id)) is not None:
            try:
                await self._client(peer).call({"op": "remove", "stream": stream_id})
                return
            except PeerGone as exc:
                self._gone(peer, exc)
        await self.table.remove(stream_id)

    async def summaries(self) -> list[StreamSummary]:
        """The streams of every worker."""
        out = self.table.summaries()
        if self._workers is None:
            return out
        for slot, peer in sorted(self._workers.live().items()):
            if slot == self._workers.slot:
                continue
            try:
                reply, _ = await self._client(peer).call({"op": "list"})
            except PeerGone as exc:
                self._gone(peer, exc)
                continue
            out += [StreamSummary.model_validate(s) for s in reply["streams"]]
        return out


def _without_image(frame: FrameDetections) -> FrameDetections:
    return replace(frame, image=None)

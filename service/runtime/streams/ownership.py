"""Which worker process owns a stream: a pure function of the stream's id and the live workers.

Under ``serve --workers N`` each worker listens on ``worker-{slot}.sock`` in a folder the gunicorn
master makes (``service.gunicorn_conf``); a worker started again in place of a dead one takes its
slot. The live workers are the sockets in the folder (the master removes a dead worker's), less
those a connection found dead (until a new socket takes the slot). The owner of a stream is the
live slot with the highest rendezvous hash of (slot, stream id): a worker dying moves only its own
streams, and its replacement gets them back.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from service.workers import socket_path

__all__ = ["Peer", "Workers", "owner_of"]

_SOCKET = re.compile(r"^worker-(\d+)\.sock$")


def _weight(slot: int, stream_id: str) -> int:
    digest = hashlib.blake2b(f"{slot}\0{stream_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(stream_id: str, slots: list[int]) -> int:
    """The slot that owns ``stream_id`` among ``slots`` (rendezvous hashing)."""
    return max(slots, key=lambda slot: (_weight(slot, stream_id), -slot))


@dataclass(frozen=True)
class Peer:
    slot: int
    path: Path
    inode: int  # a new socket in the same slot is a new worker


class Workers:
    """The live workers, as this worker (``slot``) sees them."""

    def __init__(self, folder: Path, slot: int) -> None:
        self.folder = folder
        self.slot = slot
        self._dead: set[tuple[int, int]] = set()

    def live(self) -> dict[int, Peer]:
        """Slot -> peer, this worker's own slot always among them."""
        found: dict[int, Peer] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            entries = []
        for entry in entries:
            match = _SOCKET.match(entry.name)
            if match is None:
                continue
            try:
                inode = entry.inode()
            except OSError:
                continue
            slot = int(match.group(1))
            if (slot, inode) not in self._dead:
                found[slot] = Peer(slot, Path(entry.path), inode)
        found.setdefault(self.slot, Peer(self.slot, socket_path(self.folder, self.slot), 0))
        return found

    def owner(self, stream_id: str, live: dict[int, Peer] | None = None) -> Peer:
        live = self.live() if live is None else live
        return live[owner_of(stream_id, sorted(live))]

    def mark_dead(self, peer: Peer) -> None:
        """A connection to ``peer`` failed: it is not live until a new socket takes its slot."""
        if peer.slot != self.slot:
            self._dead.add((peer.slot, peer.inode))

"""The backend side of a WebSocket tunnel (:mod:`loadbalancer.tunnel`): parses the answer to
the forwarded upgrade request, then hands on every byte."""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Protocol, cast

import httptools

from loadbalancer.errors import UpstreamError, UpstreamProtocolError, UpstreamReset

__all__ = ["TunnelSide", "TunnelUpstream"]


class TunnelSide(Protocol):
    """The tunnel, as its backend connection tells it what happens."""

    def upstream_head(self, status: int, head: bytes) -> None: ...

    def from_upstream(self, data: bytes) -> None: ...

    def upstream_closed(self, error: UpstreamError | None) -> None: ...

    def close(self) -> None: ...

    def pause_client(self, paused: bool) -> None: ...


class _Read(Enum):
    HEAD = "head"  # the handshake's answer head
    OPEN = "open"  # upgraded: raw bytes
    REJECTED = "rejected"  # a non-101 answer: passed on until it ends


class TunnelUpstream(asyncio.Protocol):
    """The backend side of a tunnel: parses the handshake's answer, then pipes."""

    def __init__(self, tunnel: TunnelSide, head_limit: int) -> None:
        self.tunnel: TunnelSide | None = tunnel
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._read = _Read.HEAD
        self._head: list[bytes] = []
        self._size = 0
        self._status = 0
        self._complete = False
        self._limit = head_limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            return
        if self._read is _Read.OPEN:
            return tunnel.from_upstream(data)
        if self._read is _Read.REJECTED:
            tunnel.from_upstream(data)
            return self._feed(data)
        self._head.append(data)
        self._size += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return self._upgraded(len(data), int(exc.args[0]))
        except httptools.HttpParserError as exc:
            return self._bad(f"bad handshake answer: {exc}")
        if self._status:
            return self._rejected()
        if self._size > self._limit:
            self._bad("handshake answer head over the limit")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:
        self._complete = True
        if self._read is _Read.REJECTED and self.tunnel is not None:
            self.tunnel.close()

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self.tunnel is not None:
                self.tunnel.close()

    def _upgraded(self, last: int, offset: int) -> None:
        """101: what follows the head in what was read belongs to the upgraded connection."""
        self._read = _Read.OPEN
        raw, self._head = b"".join(self._head), []
        cut = len(raw) - last + offset
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.upstream_head(101, raw[:cut])
            if len(raw) > cut and self.tunnel is not None:
                tunnel.from_upstream(raw[cut:])

    def _rejected(self) -> None:
        """Not upgraded: the answer goes back as it is; the tunnel closes once it has ended."""
        self._read = _Read.REJECTED
        raw, self._head = b"".join(self._head), []
        end = raw.index(b"\r\n\r\n") + 4
        tunnel = self.tunnel
        if tunnel is None:
            return
        tunnel.upstream_head(self._status, raw[:end])
        if len(raw) > end:
            tunnel.from_upstream(raw[end:])
        if self._complete:
            tunnel.close()

    def _bad(self, why: str) -> None:
        tunnel, self.tunnel = self.tunnel, None
        if self.transport is not None:
            self.transport.abort()
        if tunnel is not None:
            tunnel.upstream_closed(UpstreamProtocolError(why))

    def connection_lost(self, exc: Exception | None) -> None:
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            early = self._read is _Read.HEAD
            tunnel.upstream_closed(UpstreamReset(f"closed before answering: {exc}") if early else None)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_client(True)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_client(False)

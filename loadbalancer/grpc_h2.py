"""What both sides of the gRPC proxy share in their use of ``h2``: one configuration, header
compression that remembers, and writes gathered per turn of the event loop.

- Headers are passed on as ``h2`` parsed them, so neither side validates or normalizes them
  again: a client's are screened once (:func:`malformed`, by :mod:`loadbalancer.grpc_call`,
  which also drops the hop-by-hop ones).
- HPACK is stateful, but the same field (or header block) against an unchanged table always
  gives the same bytes (or headers): a proxy's calls repeat theirs, so each is worked out once
  and reused until the table next changes.
- A connection's frames go out in one ``transport.write`` per turn of the loop
  (:meth:`H2Protocol.write_soon`), however many calls added to them meanwhile.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import cast

import h2.config
import h2.connection
from hpack import Decoder, Encoder, HeaderTuple
from hpack.table import HeaderTable

__all__ = ["H2Protocol", "malformed", "new_connection", "send_data"]

_REMEMBERED = 256  # fields (encoder) or header blocks (decoder) remembered per connection
_SMALL = 1024  # bytes: larger fields and blocks are not remembered (a memory bound)
_NAMES = re.compile(rb"(?::?[!#$%&'*+\-.^_`|~0-9a-z]+\n)*")  # field names as HTTP/2 allows them
_BAD_VALUE = re.compile(rb"[\x00\r\n]")


class _CountedTable(HeaderTable):
    """An HPACK table that counts its changes: what was worked out against it holds while the
    count stays the same."""

    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, newmax: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, newmax)  # type: ignore[attr-defined]  # (mypy: a property)


class _Encoder(Encoder):
    """Remembers the bytes of each field whose encoding left the table as it was: one it holds
    (an index), or one never indexed (a literal). Never-indexed fields, values that change from
    message to message (a request id, a deadline), are not Huffman-coded, which in pure Python
    costs more than the few bytes it saves."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table: _CountedTable = _CountedTable()
        self._known: dict[tuple[bytes, bytes, bool], bytes] = {}
        self._at = 0

    def add(self, to_add: tuple[bytes, bytes], sensitive: bool, huffman: bool = False) -> bytes:
        table = self.header_table
        if table.changes != self._at or len(self._known) >= _REMEMBERED:
            self._known.clear()
            self._at = table.changes
        key = (to_add[0], to_add[1], sensitive)
        known = self._known.get(key)
        if known is not None:
            return known
        encoded = super().add(to_add, sensitive, huffman and not sensitive)
        if table.changes == self._at and len(to_add[0]) + len(to_add[1]) <= _SMALL:
            self._known[key] = encoded
        return encoded


class _Decoder(Decoder):
    """Remembers the headers of header blocks that left the table as it was."""

    def __init__(self) -> None:
        super().__init__()
        self.header_table: _CountedTable = _CountedTable()
        self._known: dict[tuple[bytes, bool], list[HeaderTuple]] = {}
        self._at = 0

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        table = self.header_table
        if table.changes != self._at:
            self._known.clear()
            self._at = table.changes
        key = (bytes(data), raw)
        known = self._known.get(key)
        if known is not None:
            return list(known)
        headers = list(super().decode(data, raw))
        if table.changes == self._at and len(self._known) < _REMEMBERED and len(data) <= _SMALL:
            self._known[key] = headers
            return list(headers)
        return headers


def new_connection(*, client_side: bool) -> h2.connection.H2Connection:
    """An ``h2`` connection for the proxy: bytes headers, passed on as parsed, HPACK that
    remembers."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=client_side, header_encoding=None,
        validate_outbound_headers=False, normalize_outbound_headers=False,
        validate_inbound_headers=False, normalize_inbound_headers=False))
    decoder = _Decoder()
    decoder.max_header_list_size = conn.decoder.max_header_list_size
    decoder.max_allowed_table_size = conn.decoder.max_allowed_table_size
    conn.encoder, conn.decoder = _Encoder(), decoder
    return conn


def malformed(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether a received header could not be passed on as it is (``h2`` checks none here): a
    name that is not a lowercase token, or a value with NUL, CR or LF."""
    names = b"".join([name + b"\n" for name, _ in headers])
    if _NAMES.fullmatch(names) is None or names.count(b"\n") != len(headers):
        return True
    return _BAD_VALUE.search(b"".join([value for _, value in headers])) is not None


def send_data(conn: h2.connection.H2Connection, stream_id: int, data: bytes | memoryview,
              end: bool) -> int:
    """Sends what the windows allow of ``data``, in frames of at most the peer's size, END_STREAM
    on the last one when ``end`` and all of it went; returns the bytes sent."""
    if not data and not end:
        return 0
    room = min(conn.local_flow_control_window(stream_id), len(data))
    limit = conn.max_outbound_frame_size
    if room == len(data) <= limit:  # the usual case: one frame
        conn.send_data(stream_id, data if isinstance(data, bytes) else data.tobytes(), end_stream=end)
        return room
    sent = 0
    while sent < room:
        size = min(room - sent, limit)
        last = end and sent + size == len(data)
        conn.send_data(stream_id, bytes(data[sent:sent + size]), end_stream=last)
        sent += size
    return sent


class H2Protocol(asyncio.Protocol):
    """An ``h2`` connection on a transport, whose frames are written once per turn of the loop."""

    def __init__(self, conn: h2.connection.H2Connection) -> None:
        self.h2 = conn
        self.transport: asyncio.Transport | None = None
        self._write_due = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def write_soon(self) -> None:
        """What ``h2`` has to send goes out at the end of this turn of the loop, with whatever
        else is added to it meanwhile."""
        if not self._write_due:
            self._write_due = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Writes what ``h2`` has to send now."""
        self._write_due = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

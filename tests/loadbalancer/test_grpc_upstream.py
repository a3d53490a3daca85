"""A backend connection (:class:`loadbalancer.grpc_upstream.GrpcConnection`) on a fake transport:
a GOAWAY, however the reads cut it, fails only the streams above its last stream id (they may be
retried) and leaves the connection answering the others."""

from __future__ import annotations

import h2.events
from hyperframe.frame import GoAwayFrame

from bench.grpc_micro import MESSAGE, REQUEST_HEADERS, RESPONSE_HEADERS, TRAILERS, Peers, Stand
from loadbalancer.errors import UpstreamError
from loadbalancer.grpc_upstream import Headers


class _Receiver:
    def __init__(self) -> None:
        self.failed: bool | None = None  # unprocessed, once failed
        self.trailers: Headers | None = None
        self.data = b""

    def on_headers(self, headers: Headers, end: bool) -> None:
        pass

    def on_data(self, data: bytes, flow: int, end: bool) -> None:
        self.data += data

    def on_trailers(self, headers: Headers) -> None:
        self.trailers = headers

    def on_failed(self, error: UpstreamError, unprocessed: bool) -> None:
        self.failed = unprocessed

    def on_writable(self) -> None:
        pass


async def test_a_goaway_cut_across_reads_fails_only_the_streams_above_it() -> None:
    peers = Peers()
    stand = await Stand.open(peers)
    conn, transport, server = stand.upstreams[0]
    first, second = _Receiver(), _Receiver()
    one = conn.open(REQUEST_HEADERS, first)
    two = conn.open(REQUEST_HEADERS, second)
    for stream_id in (one, two):
        conn.send(stream_id, MESSAGE, True)
    conn.flush()
    server.receive_data(transport.take())
    server.send_headers(one, RESPONSE_HEADERS)
    answer = server.data_to_send()
    drain = GoAwayFrame(0)  # grpc's drain: the first call is still answered
    drain.last_stream_id = one
    server.ping(b"12345678")
    goaway = drain.serialize() + server.data_to_send()
    server.send_data(one, MESSAGE)
    server.send_headers(one, TRAILERS, end_stream=True)
    rest = server.data_to_send()
    data = answer + goaway + rest
    cut = len(answer) + 5  # inside the GOAWAY frame's header
    for piece in (data[:cut], data[cut:cut + 7], data[cut + 7:]):
        conn.data_received(piece)
    assert second.failed is True and first.failed is None
    assert conn.going_away and not conn.available
    assert first.data == MESSAGE and first.trailers == TRAILERS
    pings = [e for e in server.receive_data(transport.take()) if isinstance(e, h2.events.PingAckReceived)]
    assert len(pings) == 1  # the connection still answers

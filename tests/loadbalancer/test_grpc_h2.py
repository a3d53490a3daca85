"""The ``h2`` parts of the balancer's gRPC side (:mod:`loadbalancer.grpc_h2`): HPACK that
remembers gives the table and headers plain HPACK gives (and its bytes, but for never-indexed
values, written without Huffman coding), frames go out once per turn of the loop
and DATA stays within the windows and frame size; and calls through the balancer's own protocols
on fake transports (``bench.grpc_micro``): answered whole, a malformed header refused."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import h2.connection
import h2.events
import pytest
from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple

from bench.grpc_micro import REQUEST_HEADERS, FakeTransport, Peers, Stand, run
from loadbalancer.grpc_h2 import H2Protocol, malformed, new_connection, send_data


def _blocks(seed: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """Header lists that mostly repeat, with values that change, never-indexed fields and values
    large enough to evict the table's entries."""
    rng = random.Random(seed)
    for _ in range(500):
        headers: list[tuple[bytes, bytes]] = [(b":path", b"/svc/M%d" % rng.randrange(3))]
        for name in (b"content-type", b"x-a", b"x-b"):
            value = b"v%d" % (rng.randrange(4) if rng.random() < 0.9 else rng.randrange(10**6))
            headers.append((name, value * rng.choice([1, 1, 1, 1, 300])))
        if rng.random() < 0.5:
            headers.append(NeverIndexedHeaderTuple(b"grpc-timeout", b"%dm" % rng.randrange(10)))
        yield headers


def test_remembering_hpack_encodes_and_decodes_as_plain_hpack() -> None:
    conn = new_connection(client_side=True)
    plain_encoder, plain_decoder, reference = Encoder(), Decoder(), Decoder()
    for n, headers in enumerate(_blocks(1)):
        if n == 250:  # the peer's table shrinks midway
            conn.encoder.header_table_size = plain_encoder.header_table_size = 256
        block = conn.encoder.encode(headers)
        plain_block = plain_encoder.encode(headers)
        # the same table as plain HPACK keeps; the same bytes but for never-indexed values,
        # which are written without Huffman coding
        assert conn.encoder.header_table.dynamic_entries == plain_encoder.header_table.dynamic_entries
        if not any(isinstance(h, NeverIndexedHeaderTuple) for h in headers):
            assert block == plain_block
        expected = list(reference.decode(plain_block, raw=True))
        ours = list(conn.decoder.decode(block, raw=True))
        plain = list(plain_decoder.decode(block, raw=True))
        assert ours == plain == expected
        assert [isinstance(h, HeaderTuple) and not h.indexable for h in ours] == \
            [isinstance(h, HeaderTuple) and not h.indexable for h in plain] == \
            [isinstance(h, HeaderTuple) and not h.indexable for h in expected]


@pytest.mark.parametrize(("headers", "bad"), [
    ([(b":path", b"/svc/M"), (b"te", b"trailers"), (b"x-id", b"a b")], False),
    ([], False),
    ([(b"X-Id", b"1")], True),  # capitals
    ([(b"x id", b"1")], True),
    ([(b"", b"1")], True),
    ([(b"x-a\nx-b", b"1")], True),
    ([(b"x-id", b"1\r\nx-b: 2")], True),
    ([(b"x-id", b"\x00")], True),
])
def test_a_clients_headers_are_screened_once(headers: list[tuple[bytes, bytes]], bad: bool) -> None:
    assert malformed(headers) is bad


async def test_frames_go_out_once_per_turn_of_the_loop() -> None:
    protocol = H2Protocol(new_connection(client_side=True))
    transport = FakeTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.h2.initiate_connection()
    for _ in range(10):
        stream_id = protocol.h2.get_next_available_stream_id()
        protocol.h2.send_headers(stream_id, REQUEST_HEADERS)
        protocol.write_soon()
    assert transport.writes == 0
    await asyncio.sleep(0)
    assert transport.writes == 1
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    events = server.receive_data(transport.take())
    assert sum(isinstance(e, h2.events.RequestReceived) for e in events) == 10


def test_data_goes_in_frames_of_the_peers_size_within_the_window() -> None:
    client = new_connection(client_side=True)
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    stream_id = client.get_next_available_stream_id()
    client.send_headers(stream_id, REQUEST_HEADERS)
    assert send_data(client, stream_id, b"", False) == 0
    assert send_data(client, stream_id, memoryview(b"a" * 40_000), True) == 40_000
    events = server.receive_data(client.data_to_send())
    sizes = [len(e.data) for e in events if isinstance(e, h2.events.DataReceived)]
    ends = [e.stream_ended is not None for e in events if isinstance(e, h2.events.DataReceived)]
    assert sizes == [16384, 16384, 7232] and ends == [False, False, True]
    # 65,535 bytes of window in all: the second stream gets what is left, without END_STREAM
    other = client.get_next_available_stream_id()
    client.send_headers(other, REQUEST_HEADERS)
    assert send_data(client, other, b"b" * 40_000, True) == 65_535 - 40_000


async def test_calls_through_the_balancers_protocols_are_answered_whole() -> None:
    result = await run(calls=96, batch=16)
    assert result["calls"] == 96
    assert result["writes_per_call"] < 1  # gathered: not a write per frame


async def test_a_header_name_with_capitals_is_refused_not_passed_on() -> None:
    peers = Peers()
    stand = await Stand.open(peers)
    await stand.exchange(peers.requests(1, [*REQUEST_HEADERS, (b"X-Bad", b"1")]))
    assert peers.answered == 1
    assert (b"grpc-status", b"3") in peers.last_headers  # INVALID_ARGUMENT
    assert peers.served == 0  # nothing reached a backend
    await stand.exchange(peers.requests(1))
    assert peers.answered == 2 and (b"grpc-status", b"0") in peers.last_headers
    assert peers.served == 1

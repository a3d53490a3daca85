"""An HTTP/2 client gets the answer's fields an HTTP/1.1 client gets: ``answer_fields`` (which
builds them from the backend's parsed head) against the HTTP/1.1 head ``response_head`` writes
for the same answer, turned into fields as a generic HTTP/1.1-to-HTTP/2 gateway would
(``answer_headers``), with the same HPACK indexing choices."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from loadbalancer.h2_downstream import answer_fields, answer_headers
from loadbalancer.messages import response_head
from loadbalancer.upstream import Framing, ResponseHead

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1,
                max_size=12).map(str.encode)
VALUE = st.from_regex(rb"\A[\x21-\x7e]([\x20-\x7e]{0,20}[\x21-\x7e])?\Z")
NAMES = st.one_of(TOKEN, st.sampled_from([b"Content-Type", b"Date", b"ETag", b"X-Request-Id",
                                          b"Last-Modified", b"Retry-After", b"Cache-Control"]))


@st.composite
def heads(draw: st.DrawFn) -> ResponseHead:
    fields = draw(st.lists(st.tuples(NAMES, VALUE), max_size=8))
    fields = [(n, v) for n, v in fields if n.lower() not in (b"content-length", b"x-upstream")]
    framing = draw(st.sampled_from(Framing))
    length = -1 if framing in (Framing.CHUNKED, Framing.CLOSE) else draw(st.integers(-1, 10**9))
    lines = [piece for name, value in fields for piece in (name, b": ", value, b"\r\n")]
    has_id = any(name.lower() == b"x-request-id" for name, _ in fields)
    return ResponseHead(draw(st.integers(200, 599)), b"", lines, framing, length, None, has_id)


def indexed(fields: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, bytes, bytes]]:
    return [(type(f).__name__, bytes(f[0]), bytes(f[1])) for f in fields]


@given(heads(), st.booleans())
def test_http2_fields_are_the_http11_heads(head: ResponseHead, close: bool) -> None:
    upstream, request_id = b"127.0.0.1:8001", b"req-1"
    h1 = response_head(head, upstream=upstream, request_id=request_id, http11=True, close=close)
    assert indexed(answer_fields(head, upstream, request_id)) == indexed(answer_headers(h1))


def test_the_changing_fields_are_never_indexed() -> None:
    head = ResponseHead(200, b"OK", [b"Date", b": ", b"now", b"\r\n", b"Content-Type", b": ",
                                     b"application/json", b"\r\n"], Framing.LENGTH, 12, None, False)
    fields = {f[0]: type(f).__name__ for f in answer_fields(head, b"b:1", b"r")}
    assert fields[b"date"] == fields[b"x-request-id"] == fields[b"content-length"] == \
        "NeverIndexedHeaderTuple"
    assert fields[b"content-type"] == fields[b"x-upstream"] == fields[b":status"] == "tuple"

"""HTTP/2 on the balancer's TLS proxy port, with a PKI made here (``pki.py``):

- ALPN: a client offering h2 and http/1.1 gets h2; one offering http/1.1 alone gets it; with
  ``--no-http2`` every client gets http/1.1;
- HTTP requests over HTTP/2 reach the HTTP backends as HTTP/1.1 and come back whole: bodies, the
  request id, the headers the balancer adds, many streams at once on one connection spread over
  the backends, an answer larger than the client's stream window, HEAD, the balancer's own
  errors (413, and 502 with no backend left), retries past a backend that refuses connections;
- as over HTTP/1.1, a request not read in time is answered 408 and an idle connection closed,
  and on SIGTERM the streams in flight finish before the balancer exits, new ones refused
  (``REFUSED_STREAM``);
- gRPC calls on the proxy port go to the gRPC side (``--grpc-port``'s backends), and are
  answered ``UNIMPLEMENTED`` by a balancer that has none.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import ssl
import time
from collections.abc import Iterator

import grpc
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import pytest

from harness.procs import Fleet, GrpcBackend, await_until, free_port, start_all, wait_until
from tests.loadbalancer.harness import BackendProc, LBProc
from tests.loadbalancer.pki import Authority, Issued
from tests.loadbalancer.test_grpc_tls import NAME_OVERRIDE, call, credentials, grpc_health
from tests.loadbalancer.test_lb_tls import trusting

pytestmark = pytest.mark.slow


def alpn(port: int, context: ssl.SSLContext, offered: list[str]) -> str | None:
    context.set_alpn_protocols(offered)
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.selected_alpn_protocol()


class SmallWindowClient:
    """A bare HTTP/2 client over TLS whose stream window is ``window`` bytes: the balancer must
    wait for its WINDOW_UPDATEs, which it sends only as it reads."""

    def __init__(self, port: int, context: ssl.SSLContext, window: int, *,
                 read_size: int = 65536, pause: float = 0.0) -> None:
        context.set_alpn_protocols(["h2"])
        raw = socket.socket()
        raw.settimeout(10.0)
        if pause:  # a slow reader: a small receive buffer, read a little at a time
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", port))
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.read_size, self.pause = read_size, pause
        self.pending: list[h2.events.Event] = []  # received, not yet taken by wait_for
        self.h2 = h2.connection.H2Connection()
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        if window > 65535:
            self.h2.increment_flow_control_window(window)
        self.sock.sendall(self.h2.data_to_send())

    def get(self, path: str, *, reset_after: int | None = None) -> tuple[dict[bytes, bytes], bytes]:
        """The answer's fields and body; with ``reset_after``, the stream is reset once that
        many body bytes have come (and what came is returned)."""
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "https"),
                                   (":authority", "lb")], end_stream=True)
        self.sock.sendall(self.h2.data_to_send())
        fields: dict[bytes, bytes] = {}
        body = bytearray()
        while True:
            if self.pause:
                time.sleep(self.pause)  # the slow reader's pace (not a wait for anything)
            data = self.sock.recv(self.read_size)
            assert data, "the balancer closed the connection"
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                    fields = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == sid:
                    body += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
                    if reset_after is not None and len(body) >= reset_after:
                        self.h2.reset_stream(sid)
                        self.sock.sendall(self.h2.data_to_send())
                        return fields, bytes(body)
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == sid:
                    self.sock.sendall(self.h2.data_to_send())
                    return fields, bytes(body)
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == sid:
                    raise AssertionError("the balancer reset the stream")
            self.sock.sendall(self.h2.data_to_send())

    def close(self) -> None:
        self.sock.close()

    def wait_for(self, kind: type[h2.events.Event], within: float) -> h2.events.Event | None:
        """The first event of ``kind`` not yet taken, waiting for it up to ``within`` seconds
        (None: the connection closed first); events of other kinds are kept for later calls."""
        self.sock.settimeout(within)
        while True:
            for event in self.pending:
                if isinstance(event, kind):
                    self.pending.remove(event)
                    return event
            data = self.sock.recv(65536)
            if not data:
                return None
            self.pending += self.h2.receive_data(data)
            self.sock.sendall(self.h2.data_to_send())


@pytest.fixture
def backends() -> Iterator[list[BackendProc]]:
    procs = [BackendProc("b0"), BackendProc("b1")]
    try:
        yield start_all(procs)
    finally:
        for proc in procs:
            proc.stop()


def tls_args(issued: Issued) -> tuple[str, ...]:
    return "--tls-cert", str(issued.cert), "--tls-key", str(issued.key)


def test_http2_requests_through_the_tls_proxy_port(
        pki: tuple[Authority, Authority], backends: list[BackendProc]) -> None:
    ca, _ = pki
    trust = trusting(ca)
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: tried, refused, retried
    lb = LBProc([b.url for b in backends] + [refused], *tls_args(ca.issue("lb")),
                "--max-body-bytes", "100000", "--health-interval", "30")
    ids = {b.id for b in backends}
    try:
        lb.start().wait_ready(healthy=2)
        assert alpn(lb.port, trusting(ca), ["h2", "http/1.1"]) == "h2"
        assert alpn(lb.port, trusting(ca), ["http/1.1"]) == "http/1.1"
        url = f"https://127.0.0.1:{lb.port}"

        async def run() -> None:
            async with httpx.AsyncClient(http2=True, verify=trust, timeout=10.0) as client:
                body = bytes(range(256)) * 40
                answer = await client.post(url + "/v1/detect?q=1", content=body,
                                           headers={"x-request-id": "h2-request-1"})
                assert answer.http_version == "HTTP/2" and answer.status_code == 200
                seen = answer.json()
                assert seen["body_bytes"] == len(body)
                assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()
                assert seen["path"] == "/v1/detect" and seen["query"] == "q=1"
                assert seen["headers"]["x-request-id"] == "h2-request-1"
                assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
                assert seen["headers"]["host"] == f"127.0.0.1:{lb.port}"  # :authority
                assert answer.headers["x-request-id"] == "h2-request-1"
                assert answer.headers["x-upstream"] in ids
                assert "connection" not in answer.headers

                # many streams at once on the one connection, over both backends
                many = await asyncio.gather(*[
                    client.post(url + "/v1/detect", content=b"%d" % i) for i in range(60)])
                assert {a.status_code for a in many} == {200}
                assert {a.http_version for a in many} == {"HTTP/2"}
                assert [a.json()["body_bytes"] for a in many] == [len(b"%d" % i) for i in range(60)]
                assert {a.headers["x-upstream"] for a in many} == ids

                # an answer larger than a stream's initial window (64 KiB), streamed by the backend
                streamed = await client.get(url + "/stream?chunks=20000")
                assert streamed.status_code == 200
                name = streamed.text[:2]
                assert streamed.text == "".join(f"{name}-{i}\n" for i in range(20000))

                head = await client.head(url + "/v1/detect")
                assert head.status_code == 200 and head.content == b""
                assert int(head.headers["content-length"]) > 0

                # the balancer's own answers, in the project's error format
                too_large = await client.post(url + "/v1/detect", content=b"x" * 100_001)
                assert too_large.status_code == 413
                assert too_large.json()["error"]["code"] == "payload_too_large"
                missing = await client.get(url + "/nope")
                assert missing.status_code == 404  # the backend's

                # HTTP/1.1 on the same port still
            async with httpx.AsyncClient(verify=trust, timeout=10.0) as h1:
                plain = await h1.post(url + "/v1/detect", content=b"h1")
                assert plain.http_version == "HTTP/1.1" and plain.status_code == 200

        asyncio.run(run())

        # a client with a 1000-byte stream window: the answer waits for it, and comes whole; a
        # stream it resets mid-answer leaves the connection working
        small = SmallWindowClient(lb.port, trusting(ca), 1000)
        try:
            fields, body = small.get("/stream?chunks=5000")
            assert fields[b":status"] == b"200"
            name = body[:2].decode()
            assert body.decode() == "".join(f"{name}-{i}\n" for i in range(5000))
            _, part = small.get("/stream?chunks=50000", reset_after=3000)
            assert 3000 <= len(part) < 50000
            fields, body = small.get("/health/live")
            assert fields[b":status"] == b"200" and b"alive" in body
        finally:
            small.close()
        # a client whose windows let everything through but that reads slowly: the balancer
        # stops writing (and reading the backend) while its buffer is full, and the answer
        # still comes whole
        slow = SmallWindowClient(lb.port, trusting(ca), 2**30, read_size=16384, pause=0.001)
        try:
            size = 12 * 2**20  # more than the socket buffers take (4 MiB at most, each way)
            fields, body = slow.get(f"/bytes?n={size}")
            assert fields[b":status"] == b"200" and fields[b"content-length"] == b"%d" % size
            assert body == (b"0123456789" * (size // 10 + 1))[:size]
        finally:
            slow.close()

        # a gRPC call here, with no gRPC side: UNIMPLEMENTED, nothing forwarded
        with grpc.secure_channel(f"127.0.0.1:{lb.port}", credentials(ca),
                                 options=[NAME_OVERRIDE]) as channel, \
                pytest.raises(grpc.RpcError) as caught:
            call(channel, timeout=5.0)
        assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED

        # no backend left: the balancer's 502/503 over HTTP/2, never a hang
        for backend in backends:
            backend.stop()

        async def without_backends() -> int:
            async with httpx.AsyncClient(http2=True, verify=trust, timeout=10.0) as client:
                answer = await client.post(url + "/v1/detect", content=b"x")
                assert answer.http_version == "HTTP/2"
                assert answer.json()["error"]["request_id"] == answer.headers["x-request-id"]
                return answer.status_code

        assert asyncio.run(without_backends()) in (502, 503)
    finally:
        lb.stop()


def test_grpc_calls_on_the_proxy_port_go_to_the_grpc_side(
        pki: tuple[Authority, Authority], backends: list[BackendProc]) -> None:
    ca, _ = pki
    grpc_backend = GrpcBackend("plain")
    with Fleet(grpc_backend):
        lb = LBProc([backends[0].url], *tls_args(ca.issue("lb")), "--grpc-port", str(free_port()),
                    "--grpc-backend", grpc_backend.id, "--health-interval", "0.2")
        try:
            lb.start().wait_ready()
            wait_until(lambda: grpc_health(lb) == {grpc_backend.id: "healthy"}, 15,
                       "the gRPC backend healthy")
            with grpc.secure_channel(f"127.0.0.1:{lb.port}", credentials(ca),
                                     options=[NAME_OVERRIDE]) as channel:
                assert {call(channel, b"%d" % i) for i in range(5)} == {"plain"}
                assert call(channel, b"big" * 100_000) == "plain"  # 300 kB each way
            answer = httpx.post(f"https://127.0.0.1:{lb.port}/v1/detect", content=b"x",
                                verify=trusting(ca), timeout=10.0)
            assert answer.status_code == 200 and answer.headers["x-upstream"] == backends[0].id
        finally:
            lb.stop()


def test_http2_slow_requests_and_idle_connections_time_out(
        pki: tuple[Authority, Authority], backends: list[BackendProc]) -> None:
    ca, _ = pki
    lb = LBProc([backends[0].url], *tls_args(ca.issue("lb")),
                env={"YOLOSERVE_LB_CLIENT_REQUEST_TIMEOUT": "1",
                     "YOLOSERVE_LB_CLIENT_KEEPALIVE_TIMEOUT": "2"})
    try:
        lb.start().wait_ready()
        client = SmallWindowClient(lb.port, trusting(ca), 65535)
        try:
            # a body begun and never finished: 408, in about client_request_timeout
            client.h2.send_headers(1, [(":method", "POST"), (":path", "/v1/detect"),
                                       (":scheme", "https"), (":authority", "lb")])
            client.h2.send_data(1, b"part of it")
            client.sock.sendall(client.h2.data_to_send())
            started = time.monotonic()
            answer = client.wait_for(h2.events.ResponseReceived, 10.0)
            assert isinstance(answer, h2.events.ResponseReceived)
            assert dict(answer.headers)[b":status"] == b"408"
            # then nothing open: GOAWAY and the close, in about client_keepalive_timeout
            assert client.wait_for(h2.events.ConnectionTerminated, 10.0) is not None
            assert 1.0 <= time.monotonic() - started < 10.0
        finally:
            client.close()
    finally:
        lb.stop()


def test_no_http2_keeps_the_proxy_port_on_http1(pki: tuple[Authority, Authority],
                                                backends: list[BackendProc]) -> None:
    ca, _ = pki
    lb = LBProc([backends[0].url], *tls_args(ca.issue("lb")), "--no-http2")
    try:
        lb.start().wait_ready()
        assert alpn(lb.port, trusting(ca), ["h2", "http/1.1"]) == "http/1.1"
        with httpx.Client(http2=True, verify=trusting(ca), timeout=10.0) as client:
            answer = client.post(f"https://127.0.0.1:{lb.port}/v1/detect", content=b"x")
        assert answer.http_version == "HTTP/1.1" and answer.status_code == 200
    finally:
        lb.stop()


@pytest.fixture
def slow_lb(pki: tuple[Authority, Authority]) -> Iterator[LBProc]:
    """A balancer over TLS in front of a backend that takes 1.5 s per answer."""
    ca, _ = pki
    slow = BackendProc("slow", delay_ms=1500)
    start_all([slow])
    lb = LBProc([slow.url], *tls_args(ca.issue("lb")), "--shutdown-timeout", "10")
    try:
        yield lb.start().wait_ready()
    finally:
        lb.stop()
        slow.stop()


async def test_sigterm_lets_the_streams_in_flight_finish(pki: tuple[Authority, Authority],
                                                         slow_lb: LBProc) -> None:
    ca, _ = pki
    lb = slow_lb
    url = f"https://127.0.0.1:{lb.port}/v1/detect"
    async with httpx.AsyncClient(http2=True, verify=trusting(ca), timeout=15.0) as client:
        requests = [asyncio.create_task(client.post(url, content=b"%d" % i)) for i in range(5)]

        async def all_in_flight() -> bool:
            return bool((await asyncio.to_thread(lb.status))["inflight"] == 5)

        await await_until(all_in_flight, 5.0, "5 requests in flight")
        lb.signal(signal.SIGTERM)
        answers = await asyncio.gather(*requests)
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.http_version for a in answers} == {"HTTP/2"}
    assert lb.proc is not None
    assert await asyncio.to_thread(lb.proc.wait, 10) == 0
    assert '"message":"drained"' in lb.logs()


def test_sigterm_refuses_new_streams_on_a_busy_connection(pki: tuple[Authority, Authority],
                                                          slow_lb: LBProc) -> None:
    ca, _ = pki
    lb = slow_lb
    client = SmallWindowClient(lb.port, trusting(ca), 65535)
    request = [(":method", "GET"), (":path", "/v1/detect"), (":scheme", "https"), (":authority", "lb")]
    try:
        client.h2.send_headers(1, request, end_stream=True)
        client.sock.sendall(client.h2.data_to_send())
        wait_until(lambda: lb.status()["inflight"] == 1, 5.0, "the request in flight")
        lb.signal(signal.SIGTERM)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", lb.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(lambda: not listening(), 5.0, "the port closed")
        client.h2.send_headers(3, request, end_stream=True)  # after the shutdown began
        client.sock.sendall(client.h2.data_to_send())
        reset = client.wait_for(h2.events.StreamReset, 10.0)
        assert isinstance(reset, h2.events.StreamReset) and reset.stream_id == 3
        assert reset.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        answer = client.wait_for(h2.events.ResponseReceived, 10.0)
        assert isinstance(answer, h2.events.ResponseReceived) and answer.stream_id == 1
        assert dict(answer.headers)[b":status"] == b"200"
        assert client.wait_for(h2.events.ConnectionTerminated, 10.0) is None  # then closed
    finally:
        client.close()
    assert lb.proc is not None and lb.proc.wait(10) == 0

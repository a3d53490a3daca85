"""Request smuggling: seven ways of framing a request ambiguously, sent raw to the balancer over
plain TCP and over TLS, and the ways an HTTP/2 request could be turned into more than one
HTTP/1.1 request on its way to a backend (h2 to h1 "downgrade" smuggling), sent over HTTP/2 on
the TLS port. Each gets a 400 and nothing of it reaches the backend.

The backend here records every request it gets apart from the balancer's health probes (a
threaded HTTP server in this process, so that what arrives is seen directly); after the
smuggling attempt a well-formed request goes through on a new connection, so the record shows
the backend was reachable and received that one only.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from harness.procs import wait_until
from tests.loadbalancer.harness import LBProc
from tests.loadbalancer.pki import make_pki

pytestmark = pytest.mark.slow

_HEAD = b"POST /v1/detect HTTP/1.1\r\nhost: lb\r\n"
_SMUGGLED = b"GET /smuggled HTTP/1.1\r\nhost: lb\r\n\r\n"
FORMS = {
    "content-length-with-transfer-encoding":
        _HEAD + b"content-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n" + _SMUGGLED,
    "two-content-lengths": _HEAD + b"content-length: 5\r\ncontent-length: 44\r\n\r\nhello" + _SMUGGLED,
    "transfer-encoding-not-ending-in-chunked":
        _HEAD + b"transfer-encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + _SMUGGLED,
    "obsolete-line-folding":
        _HEAD + b"x-note: a\r\n transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\nhello" + _SMUGGLED,
    "bare-lf-in-header-block":
        _HEAD + b"transfer-encoding: chunked\ncontent-length: 5\r\n\r\nhello" + _SMUGGLED,
    "invalid-chunk-size": _HEAD + b"transfer-encoding: chunked\r\n\r\n5z\r\nhello\r\n0\r\n\r\n" + _SMUGGLED,
    "whitespace-before-colon": _HEAD + b"content-length : 5\r\ntransfer-encoding: chunked\r\n\r\n"
                               b"0\r\n\r\n" + _SMUGGLED,
}
CONTROL = b"POST /v1/detect?control HTTP/1.1\r\nhost: lb\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class Recorder(BaseHTTPRequestHandler):
    """Answers the health probes; records every other request line, and answers it 200."""

    protocol_version = "HTTP/1.1"
    seen: list[str]

    def _answer(self) -> None:
        if not self.path.startswith("/health/"):
            type(self).seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"status": "ready"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def recorder() -> Iterator[type[Recorder]]:
    handler = type("Seen", (Recorder,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki")


@pytest.fixture(scope="module", params=["tcp", "tls"])
def balancer(request: pytest.FixtureRequest, recorder: type[Recorder],
             pki_dir: Path) -> Iterator[tuple[LBProc, ssl.SSLContext | None]]:
    args: list[str] = []
    context = None
    if request.param == "tls":
        ca, _ = make_pki(pki_dir)
        issued = ca.issue("lb")
        args = ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]
        context = ssl.create_default_context(cafile=ca.cert)
    lb = LBProc([recorder.url], *args, "--health-interval", "0.5")  # type: ignore[attr-defined]
    try:
        lb.start().wait_ready()
        yield lb, context
    finally:
        lb.stop()


def exchange(port: int, context: ssl.SSLContext | None, data: bytes) -> bytes:
    """Sends ``data`` on a new connection and reads until the balancer closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as raw:
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, ssl.SSLError):
            pass  # closed with bytes unread: what was answered is in hand
        return b"".join(chunks)


@pytest.mark.parametrize("form", list(FORMS))
def test_smuggling_forms_get_400_and_never_reach_the_backend(
    form: str, balancer: tuple[LBProc, ssl.SSLContext | None], recorder: type[Recorder]
) -> None:
    lb, context = balancer
    recorder.seen.clear()
    answer = exchange(lb.port, context, FORMS[form])
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # one answer: nothing smuggled was answered
    assert b'"invalid_request"' in answer
    control = exchange(lb.port, context, CONTROL)
    assert control.startswith(b"HTTP/1.1 200 "), control[:300]
    wait_until(lambda: recorder.seen, 5.0, "the control request at the backend")
    assert recorder.seen == ["POST /v1/detect?control"]


_H2_HEAD = [(b":method", b"POST"), (b":path", b"/v1/detect"), (b":scheme", b"https"),
            (b":authority", b"lb")]
H2_FORMS: dict[str, tuple[list[tuple[bytes, bytes]], bytes]] = {
    "crlf-in-a-value": ([*_H2_HEAD, (b"x-note", b"a\r\ntransfer-encoding: chunked")], b"0\r\n\r\n"),
    "crlf-in-the-path": ([(b":method", b"GET"), (b":path", b"/ HTTP/1.1\r\nhost: lb\r\n\r\nGET /smuggled"),
                          (b":scheme", b"https"), (b":authority", b"lb")], b""),
    "space-in-the-path": ([(b":method", b"GET"), (b":path", b"/v1/detect HTTP/1.0"), (b":scheme", b"https"),
                           (b":authority", b"lb")], b""),
    "space-in-the-method": ([(b":method", b"GET /smuggled"), (b":path", b"/"), (b":scheme", b"https"),
                             (b":authority", b"lb")], b""),
    "uppercase-name": ([*_H2_HEAD, (b"Transfer-Encoding", b"chunked")], b"0\r\n\r\n" + _SMUGGLED),
    "colon-in-a-name": ([*_H2_HEAD, (b"x-a:b", b"c")], b""),
    "transfer-encoding": ([*_H2_HEAD, (b"transfer-encoding", b"chunked")], b"0\r\n\r\n" + _SMUGGLED),
    "content-length-shorter-than-the-body": ([*_H2_HEAD, (b"content-length", b"5")], b"hello" + _SMUGGLED),
    "two-content-lengths": ([*_H2_HEAD, (b"content-length", b"5"), (b"content-length", b"44")],
                            b"hello" + _SMUGGLED),
}

_BODY_LONGER = {"content-length-shorter-than-the-body", "two-content-lengths"}


def h2_exchange(port: int, context: ssl.SSLContext, headers: list[tuple[bytes, bytes]],
                body: bytes) -> bytes:
    """One request over HTTP/2, sent as given (the client checks nothing): the answer's
    ``:status``, or ``GOAWAY`` and its error code when the balancer ends the connection."""
    context.set_alpn_protocols(["h2"])
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False, validate_inbound_headers=False))
    with socket.create_connection(("127.0.0.1", port), timeout=10.0) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        assert sock.selected_alpn_protocol() == "h2"
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=not body)
        if body:
            conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "closed without an answer"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    return dict(event.headers)[b":status"]
                if isinstance(event, h2.events.ConnectionTerminated):
                    return b"GOAWAY %d" % event.error_code
                assert not isinstance(event, h2.events.StreamReset), event
            sock.sendall(conn.data_to_send())


@pytest.mark.parametrize("balancer", ["tls"], indirect=True)  # HTTP/2 is on the TLS port
@pytest.mark.parametrize("form", list(H2_FORMS))
def test_http2_downgrade_forms_get_400_and_never_reach_the_backend(
    form: str, balancer: tuple[LBProc, ssl.SSLContext | None], recorder: type[Recorder]
) -> None:
    lb, context = balancer
    assert context is not None
    recorder.seen.clear()
    headers, body = H2_FORMS[form]
    # a body longer than its Content-Length is a protocol error to the h2 library itself: the
    # connection ends with GOAWAY PROTOCOL_ERROR (1) before any request is made of it
    expected = b"GOAWAY 1" if form in _BODY_LONGER else b"400"
    assert h2_exchange(lb.port, context, headers, body) == expected
    control = [*_H2_HEAD[:1], (b":path", b"/v1/detect?control"), *_H2_HEAD[2:], (b"content-length", b"2")]
    assert h2_exchange(lb.port, context, control, b"ok") == b"200"
    wait_until(lambda: recorder.seen, 5.0, "the control request at the backend")
    assert recorder.seen == ["POST /v1/detect?control"]

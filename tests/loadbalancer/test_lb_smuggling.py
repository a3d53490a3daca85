"""Request smuggling: seven ways of framing a request ambiguously, sent raw to the balancer over
plain TCP and over TLS. Each gets a 400 and nothing of it reaches the backend.

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

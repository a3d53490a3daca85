"""The proxy's HTTP behaviour through a real balancer process in front of two real backends:
headers, bodies, framing, limits, and the admin API with its token and metrics."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.loadbalancer.harness import BackendProc, LBProc, start_backends

TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def lb() -> Iterator[tuple[LBProc, dict[str, str]]]:
    backends = start_backends([BackendProc("alpha"), BackendProc("beta")])
    proc = LBProc(
        [b.url for b in backends],
        "--max-body-bytes",
        "65536",
        "--health-interval",
        "0.5",
        "--max-header-bytes",
        "8192",
        token=TOKEN,
    )
    proc.start().wait_ready()
    yield proc, {b.id: b.name for b in backends}
    proc.stop()
    for b in backends:
        b.stop()


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Sends raw bytes, reads until the balancer closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_request_id_is_generated_forwarded_and_echoed(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, names = lb
    response = httpx.post(proc.url + "/v1/detect", content=b"img")
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    assert len(rid) == 32 and int(rid, 16) >= 0
    echo = response.json()
    assert echo["headers"]["x-request-id"] == rid
    assert names[response.headers["x-upstream"]] == echo["backend"]


def test_request_id_and_forwarding_headers(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, _ = lb
    headers = {
        "X-Request-ID": "client-id-42",
        "X-Request-Timeout-Ms": "5000",
        "X-Forwarded-For": "10.1.1.1",
        "X-Custom": "kept",
    }
    response = httpx.post(proc.url + "/v1/detect?conf=0.3", content=b"img", headers=headers)
    echo = response.json()
    assert response.headers["x-request-id"] == "client-id-42"
    assert echo["headers"]["x-request-id"] == "client-id-42"
    assert 4000 < int(echo["headers"]["x-request-timeout-ms"]) <= 5000  # the remaining budget
    assert echo["headers"]["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert echo["headers"]["x-custom"] == "kept"
    assert echo["query"] == "conf=0.3"


def test_chunked_request_body_is_buffered_and_sent_with_a_length(
    lb: tuple[LBProc, dict[str, str]],
) -> None:
    proc, _ = lb
    parts = [bytes([i]) * 5000 for i in range(7)]
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=5)
    conn.request(
        "POST",
        "/v1/detect",
        body=iter(parts),
        encode_chunked=True,
        headers={"Transfer-Encoding": "chunked"},
    )
    response = conn.getresponse()
    echo = json.loads(response.read())
    conn.close()
    assert response.status == 200
    assert echo["body_bytes"] == 35000
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert echo["headers"]["content-length"] == "35000"
    assert "transfer-encoding" not in echo["headers"]


def test_chunked_answer_streams_through(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, names = lb
    response = httpx.get(proc.url + "/stream?chunks=5")
    name = names[response.headers["x-upstream"]]
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.text == "".join(f"{name}-{i}\n" for i in range(5))


def test_keep_alive_then_connection_close(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, _ = lb
    conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=5)
    for _ in range(3):
        conn.request("POST", "/v1/detect", body=b"x")
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and response.getheader("connection") is None
    sock = conn.sock
    conn.request("POST", "/v1/detect", body=b"x", headers={"Connection": "close"})
    response = conn.getresponse()
    response.read()
    assert conn.sock is None or conn.sock is sock  # the same connection served all four
    assert response.getheader("connection") == "close"
    conn.close()


def test_head_request(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, _ = lb
    with httpx.Client() as client:
        head = client.head(proc.url + "/v1/detect")
        assert head.status_code == 200 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        assert client.post(proc.url + "/v1/detect", content=b"x").status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431, "headers_too_large"),
        (
            b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
            413,
            "payload_too_large",
        ),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_request"),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "invalid_request"),
    ],
)
def test_requests_refused_by_the_balancer(
    lb: tuple[LBProc, dict[str, str]], request_bytes: bytes, status: int, code: str
) -> None:
    proc, _ = lb
    answer = raw(proc.port, request_bytes)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    error = json.loads(body)["error"]
    assert error["code"] == code and error["request_id"] and error["message"]


def test_chunked_body_over_the_limit_is_refused(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, _ = lb
    chunk = b"%x\r\n%s\r\n" % (40000, b"z" * 40000)
    answer = raw(
        proc.port,
        b"POST /v1/detect HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413")


def test_admin_requires_the_token(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, _ = lb
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = httpx.get(proc.admin_url + "/lb/status", headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"
    assert httpx.get(proc.admin_url + "/metrics").status_code == 401
    assert proc.admin("GET", "/lb/status").status_code == 200


def test_the_status_page_is_public_and_its_data_keeps_the_token(
        lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, _ = lb
    page = httpx.get(proc.admin_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/status.js", "/static/status.css"):
        assert httpx.get(proc.admin_url + asset).status_code == 200, asset
    assert httpx.get(proc.admin_url + "/static/nothing.js").status_code == 404
    assert httpx.get(proc.admin_url + "/lb/status").status_code == 401


def test_admin_refusals_use_the_error_format(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, _ = lb
    existing = proc.status()["backends"][0]
    cases = [
        ("POST", "/lb/backends", {"url": "ftp://x:1"}, 422, "validation_error"),
        ("POST", "/lb/backends", {"url": existing["url"]}, 409, "backend_exists"),
        ("PATCH", "/lb/backends/nope:1", {"weight": 2}, 404, "backend_not_found"),
        ("PATCH", f"/lb/backends/{existing['id']}", {"weight": 0}, 422, "validation_error"),
        ("PATCH", f"/lb/backends/{existing['id']}", {"colour": "red"}, 422, "validation_error"),
        ("DELETE", "/lb/backends/nope:1", None, 404, "backend_not_found"),
        ("GET", "/lb/nothing", None, 404, "not_found"),
    ]
    for method, path, body, status, code in cases:
        response = proc.admin(method, path, body)
        assert response.status_code == status, (method, path, response.text)
        assert response.json()["error"]["code"] == code
    bad = httpx.post(proc.admin_url + "/lb/backends", content=b"{nope", headers=proc.headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"


def _traffic(proc: LBProc, count: int) -> None:
    with httpx.Client() as client:
        for _ in range(count):
            assert client.post(proc.url + "/v1/detect", content=b"m").status_code == 200


def test_status_shows_every_backend(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, _ = lb
    before = sum(b["totals"]["requests"] for b in proc.status()["backends"])
    _traffic(proc, 20)
    status = proc.status()
    assert status["policy"] == "least_request" and status["panic"] is False
    for backend in status["backends"]:
        assert {
            "id",
            "url",
            "weight",
            "effective_weight",
            "health",
            "inflight",
            "ejected_until",
            "totals",
            "typical_ms",
            "speed_factor",
        } <= set(backend)
        assert backend["health"] == "healthy" and backend["ejected_until"] is None
        assert backend["speed_factor"] == 1.0  # equally fast stand-ins keep their weights
    assert sum(b["totals"]["requests"] for b in status["backends"]) - before >= 20


def test_metrics_parse_as_prometheus_text(lb: tuple[LBProc, dict[str, str]]) -> None:
    proc, names = lb
    _traffic(proc, 20)
    sent = sum(b["totals"]["requests"] for b in proc.status()["backends"])
    text = proc.admin("GET", "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = families["yoloserve_lb_requests"]
    assert sum(s.value for s in requests.samples if s.labels.get("code") == "200") >= 20
    upstream = families["yoloserve_lb_upstream_requests"]
    assert {s.labels["backend"] for s in upstream.samples} == set(names)
    assert sum(s.value for s in upstream.samples if s.name.endswith("_total")) == sent
    latency = families["yoloserve_lb_upstream_latency_seconds"]
    assert sum(s.value for s in latency.samples if s.name.endswith("_count")) >= 20
    health = families["yoloserve_lb_backend_health"]
    assert sum(s.value for s in health.samples if s.labels["state"] == "healthy") == 2
    for name in (
        "yoloserve_lb_retries",
        "yoloserve_lb_ejections",
        "yoloserve_lb_upstream_inflight",
        "yoloserve_lb_request_duration_seconds",
        "yoloserve_lb_upstream_errors",
        "yoloserve_lb_backend_ejected",
        "yoloserve_lb_backend_effective_weight",
    ):
        assert name in families

"""TLS at both ends of the balancer, with a PKI made here (``pki.py``: a CA, a second unrelated
CA, server and client certificates):

- the proxy port serves HTTPS (TLS 1.2+, ALPN, resumed sessions) and refuses plain HTTP;
  the admin port serves its own certificate; ``--tls-client-ca`` requires client certificates;
  a refused client gets the alert that says why, and the refusal is counted by reason;
- a renewed certificate (new key, new serial) written over the files is served to new
  connections within 5 s, without a restart and without a failed request under load;
- ``https://`` backends: verified against ``--upstream-ca``, mutual TLS to the one that requires
  a client certificate, requests and a WebSocket over TLS; one signed by the other CA is
  unhealthy, logged with the reason, and never answers (502 once it is the only one left).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import await_until, start_all, stop_all, wait_until
from tests.loadbalancer.harness import BackendProc, LBProc, Result, load, ready_over_tls
from tests.loadbalancer.pki import Authority, Issued

pytestmark = pytest.mark.slow


class TlsBackend(BackendProc):
    """A fake backend speaking HTTPS with ``issued``; with ``client_ca``, it requires a client
    certificate signed by that CA. ``trust`` is what its readiness check verifies it with."""

    def __init__(self, name: str, issued: Issued, trust: ssl.SSLContext, *,
                 client_ca: Path | None = None) -> None:
        super().__init__(name)
        self.cmd += ["--ssl-certfile", str(issued.cert), "--ssl-keyfile", str(issued.key)]
        if client_ca is not None:
            self.cmd += ["--ssl-ca-certs", str(client_ca), "--ssl-cert-reqs", str(int(ssl.CERT_REQUIRED))]
        self.url = f"https://127.0.0.1:{self.port}"
        self.trust = trust

    def ready(self) -> bool:
        return ready_over_tls(self, self.trust)


class TlsAdminLB(LBProc):
    """A balancer whose admin port speaks HTTPS, verified with ``trust``."""

    def __init__(self, *args: str, trust: ssl.SSLContext) -> None:
        super().__init__([], *args)
        self.trust = trust

    @property
    def admin_url(self) -> str:
        return f"https://127.0.0.1:{self.admin_port}"

    def status(self, timeout: float = 1.0) -> dict[str, Any]:
        response = httpx.get(self.admin_url + "/lb/status", timeout=timeout, verify=self.trust)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def trusting(ca: Authority, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca.cert)
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


@dataclass
class Handshake:
    version: str | None
    alpn: str | None
    session: ssl.SSLSession | None
    reused: bool


def https_get(port: int, context: ssl.SSLContext, path: str = "/health/live",
              session: ssl.SSLSession | None = None) -> tuple[bytes, Handshake]:
    """One GET over a new TLS connection: the answer's bytes and what the handshake gave."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
        shake = Handshake(tls.version(), tls.selected_alpn_protocol(), tls.session, tls.session_reused)
        return b"".join(chunks), shake


def served_serial(port: int, context: ssl.SSLContext) -> int:
    """The serial number of the certificate a new connection to ``port`` is given."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def backend() -> Iterator[BackendProc]:
    proc = BackendProc("plain")
    try:
        yield start_all([proc])[0]
    finally:
        proc.stop()


def test_https_served_resumed_and_plain_http_refused(
    pki: tuple[Authority, Authority], backend: BackendProc
) -> None:
    ca, _ = pki
    server, admin = ca.issue("lb"), ca.issue("admin")
    trust = trusting(ca)
    lb = TlsAdminLB("--backend", backend.url, "--tls-cert", str(server.cert), "--tls-key",
                    str(server.key), "--admin-tls-cert", str(admin.cert), "--admin-tls-key",
                    str(admin.key), trust=trust)
    try:
        lb.start().wait_ready()
        url = f"https://127.0.0.1:{lb.port}"
        response = httpx.post(url + "/v1/detect", content=b"x" * 2048, verify=trust, timeout=5.0)
        assert response.status_code == 200 and response.headers["x-upstream"] == backend.id
        # TLS 1.2+, ALPN, and a session resumed from the first connection's ticket
        answer, first = https_get(lb.port, trust)
        assert answer.startswith(b"HTTP/1.1 200")
        assert first.version in ("TLSv1.2", "TLSv1.3") and first.alpn == "http/1.1"
        assert first.session is not None
        _, second = https_get(lb.port, trust, session=first.session)
        assert second.reused
        # TLS below 1.2, or TLS 1.2 without an AEAD cipher: refused, with the alert that says why
        old = ssl.create_default_context(cafile=ca.cert)
        old.set_ciphers("ALL:@SECLEVEL=0")  # without it, this client could not offer TLS 1.1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        weak = trusting(ca)
        weak.maximum_version = ssl.TLSVersion.TLSv1_2
        weak.set_ciphers("AES128-SHA")
        for context, alert in ((old, "TLSV1_ALERT_PROTOCOL_VERSION"),
                               (weak, "SSLV3_ALERT_HANDSHAKE_FAILURE")):
            with pytest.raises(ssl.SSLError) as refused:
                https_get(lb.port, context)
            assert refused.value.reason == alert
        # the admin port: its own certificate
        assert served_serial(lb.admin_port, trust) == admin.serial
        assert served_serial(lb.port, trust) == server.serial
        # plain HTTP on the TLS port: no HTTP answer, and nothing reaches the backend; closed at
        # once (no alert to send), not after the 30 s handshake timeout
        before = lb.backend(backend.id)["totals"]["requests"]
        with socket.create_connection(("127.0.0.1", lb.port), timeout=5.0) as raw:
            raw.sendall(b"POST /v1/detect HTTP/1.1\r\nhost: lb\r\ncontent-length: 2\r\n\r\nhi")
            try:
                reply = raw.recv(65536)
            except ConnectionResetError:
                reply = b""
        assert not reply.startswith(b"HTTP/")
        assert lb.backend(backend.id)["totals"]["requests"] == before
        metrics = httpx.get(lb.admin_url + "/metrics", verify=trust, timeout=5.0).text
        assert refusals(metrics) == {("proxy", "unsupported_protocol"): 1,
                                     ("proxy", "no_shared_cipher"): 1, ("proxy", "http_request"): 1}
    finally:
        lb.stop()


def test_client_certificates_required_with_a_client_ca(
    pki: tuple[Authority, Authority], backend: BackendProc
) -> None:
    ca, other = pki
    server, client, stranger = ca.issue("lb"), ca.issue("client", server=False), other.issue(
        "stranger", server=False)
    lb = LBProc([backend.url], "--tls-cert", str(server.cert), "--tls-key", str(server.key),
                "--tls-client-ca", str(ca.cert))
    try:
        lb.start().wait_ready()
        answer, _ = https_get(lb.port, trusting(ca, client))
        assert answer.startswith(b"HTTP/1.1 200")
        # refused with the alert that says why (TLS 1.3 completes the handshake on the client's
        # side first: the alert ends the connection at the first read, before any answer)
        alerts = {
            (None, ssl.TLSVersion.TLSv1_2): "SSLV3_ALERT_HANDSHAKE_FAILURE",
            (None, ssl.TLSVersion.TLSv1_3): "TLSV13_ALERT_CERTIFICATE_REQUIRED",
            (stranger, ssl.TLSVersion.TLSv1_2): "TLSV1_ALERT_UNKNOWN_CA",  # another CA's
            (stranger, ssl.TLSVersion.TLSv1_3): "TLSV1_ALERT_UNKNOWN_CA",
        }
        for (certificate, version), alert in alerts.items():
            refused = trusting(ca, certificate)
            refused.maximum_version = version
            with pytest.raises(ssl.SSLError) as failed:
                https_get(lb.port, refused)
            assert failed.value.reason == alert, (certificate, version)
        assert lb.backend(backend.id)["totals"]["requests"] == 1
        assert refusals(httpx.get(lb.admin_url + "/metrics", timeout=5.0).text) == {
            ("proxy", "peer_did_not_return_a_certificate"): 2, ("proxy", "certificate_verify_failed"): 2}
        logged = [line for line in lb.logs().splitlines() if "TLS handshake was refused" in line]
        assert len(logged) == 2, logged  # the first of each reason
    finally:
        lb.stop()


def refusals(metrics: str) -> dict[tuple[str, str], float]:
    """``yoloserve_lb_tls_handshakes_refused_total`` by (context, reason)."""
    return {(s.labels["context"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(metrics)
            if family.name == "yoloserve_lb_tls_handshakes_refused"
            for s in family.samples if s.name.endswith("_total")}


async def test_a_renewed_certificate_is_served_within_5s_without_a_failed_request(
    pki: tuple[Authority, Authority], backend: BackendProc
) -> None:
    ca, _ = pki
    first = ca.issue("lb")
    lb = LBProc([backend.url], "--tls-cert", str(first.cert), "--tls-key", str(first.key))
    trust = trusting(ca)
    stop, results = asyncio.Event(), list[Result]()
    traffic: asyncio.Task[list[Result]] | None = None
    try:
        lb.start().wait_ready()
        assert served_serial(lb.port, trust) == first.serial
        traffic = asyncio.create_task(load(f"https://127.0.0.1:{lb.port}/v1/detect", stop=stop,
                                           into=results, concurrency=8, tls=trust))
        await await_until(lambda: holds(len(results) > 50), 10.0, "answers over TLS")

        renewed = ca.issue("lb")  # a new key and serial, each file replaced at once
        assert renewed.serial != first.serial
        written = time.monotonic()

        async def renewed_served() -> bool:
            return await asyncio.to_thread(served_serial, lb.port, trust) == renewed.serial

        served = await await_until(renewed_served, 5.0, "the renewed certificate on new connections")
        print(f"renewed certificate served {served - written:.2f}s after it was written")
        count = len(results)
        await await_until(lambda: holds(len(results) > count + 50), 10.0, "more answers")
        assert "TLS files reloaded" in lb.logs()
        assert lb.running()  # no restart
    finally:
        stop.set()
        if traffic is not None:
            await asyncio.wait_for(traffic, 30)
        lb.stop()
    failed = [r for r in results if r.status != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, e.g. {failed[0].body[:200]!r}"


async def holds(condition: bool) -> bool:
    return condition


async def test_https_backends_verified_mutual_tls_and_another_ca_refused(
    pki: tuple[Authority, Authority], tmp_path: Path
) -> None:
    ca, other = pki
    client = ca.issue("lb-client", server=False)
    trust, mutual_trust = trusting(ca), trusting(ca, client)
    one = TlsBackend("one", ca.issue("one"), trust)
    mutual = TlsBackend("mutual", ca.issue("mutual"), mutual_trust, client_ca=ca.cert)
    stranger = TlsBackend("stranger", other.issue("stranger"), trusting(other))
    lb = LBProc([one.url, mutual.url, stranger.url], "--upstream-ca", str(ca.cert), "--upstream-cert",
                str(client.cert), "--upstream-key", str(client.key), "--health-interval", "0.3")
    backends = [one, mutual, stranger]
    try:
        start_all(backends)
        lb.start().wait_ready(healthy=2)
        wait_until(lambda: lb.backend(stranger.id)["health"] == "unhealthy", 10.0,
                   "the backend of another CA to be unhealthy")
        results = await load(lb.url + "/v1/detect", total=200, concurrency=8)
        assert all(r.status == 200 for r in results), [r.body[:200] for r in results if r.status != 200]
        assert {r.upstream for r in results} == {one.id, mutual.id}  # both used, the stranger never
        # a WebSocket over TLS to a backend
        async with aiohttp.ClientSession() as session, session.ws_connect(lb.url.replace("http", "ws")
                                                                          + "/ws") as ws:
            await ws.send_str("hello")
            message = await ws.receive_json(timeout=5.0)
            assert message["text"] == "hello"
        logs = lb.logs()
        assert "TLS to a backend failed" in logs and "certificate verify failed" in logs
        # only the stranger left: refused, never a 200 from it
        for gone in (one, mutual):
            assert lb.admin("DELETE", f"/lb/backends/{gone.id}").status_code == 200
        answers = await load(lb.url + "/v1/detect", total=10, concurrency=2)
        assert {r.status for r in answers} <= {502, 503}, [(r.status, r.body[:200]) for r in answers]
    finally:
        lb.stop()
        stop_all(backends)

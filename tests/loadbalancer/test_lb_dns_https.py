"""``--discover dns+https://NAME:PORT`` and ``--discover-grpc dns+https://NAME:PORT`` against a
real DNS server (dnsmasq, the ``dns_server`` fixture of ``conftest.py``) with TLS backends on 127.0.0.2-4:
the addresses become ``https://`` backends whose certificates are checked against NAME, not
against the address (the way Envoy's ``auto_sni`` verifies a DNS cluster). One whose certificate
names NAME is used although it does not name its address; one whose certificate names only its
address is refused (unhealthy, the reason logged) and never answers; an address added to the
record later joins once its health check, over the same TLS, passes. HTTP and gRPC alike.
Skipped only where dnsmasq is not installed."""

from __future__ import annotations

import ssl
from collections import Counter
from pathlib import Path

import grpc
import pytest

from harness.procs import Proc, free_port, start_all, stop_all, wait_until
from tests.loadbalancer.harness import LBProc, load, ready_over_tls
from tests.loadbalancer.pki import Authority, Issued, make_pki
from tests.loadbalancer.test_grpc_tls import TlsGrpcBackend, call
from tests.loadbalancer.test_lb_dns import NAME, DnsServer, HostBackend

pytestmark = pytest.mark.slow


class HttpsHostBackend(HostBackend):
    """A fake backend speaking HTTPS with ``issued`` on ``host:port``; its readiness check
    verifies the chain only (its certificate may not name the address it is reached at)."""

    def __init__(self, host: str, port: int, issued: Issued, ca: Authority) -> None:
        super().__init__(host, port, delay_ms=0.0)
        self.cmd += ["--ssl-certfile", str(issued.cert), "--ssl-keyfile", str(issued.key)]
        self.url = f"https://{host}:{port}"
        self.trust = ssl.create_default_context(cafile=ca.cert)
        self.trust.check_hostname = False

    def ready(self) -> bool:
        return ready_over_tls(self, self.trust)


def by_id(backends: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(b["id"]): b for b in backends}


async def test_https_backends_from_dns_are_checked_against_the_name(
        dns_server: DnsServer, tmp_path: Path) -> None:
    ca, _ = make_pki(tmp_path)
    http_port, grpc_port = free_port(), free_port()
    named = {i: ca.issue(f"named-{i}", hosts=[NAME]) for i in (2, 4)}  # NAME, not the address
    addressed = ca.issue("addressed-3", hosts=["127.0.0.3"])  # the address, not NAME
    https = {i: HttpsHostBackend(f"127.0.0.{i}", http_port, named[i], ca) for i in (2, 4)}
    https[3] = HttpsHostBackend("127.0.0.3", http_port, addressed, ca)
    grpcs = {i: TlsGrpcBackend(f"grpc-{i}", named[i], ca, host=f"127.0.0.{i}", port=grpc_port,
                               checked_name=NAME) for i in (2, 4)}
    grpcs[3] = TlsGrpcBackend("grpc-3", addressed, ca, host="127.0.0.3", port=grpc_port,
                              checked_name="127.0.0.3")
    lb_grpc_port = free_port()
    lb = LBProc([], "--discover", f"dns+https://{NAME}:{http_port}",
                "--grpc-port", str(lb_grpc_port), "--discover-grpc", f"dns+https://{NAME}:{grpc_port}",
                "--dns-server", f"127.0.0.1:{dns_server.port}", "--dns-min-ttl", "0.2",
                "--dns-timeout", "0.5", "--health-interval", "0.2", "--slow-start-window", "0",
                "--upstream-ca", str(ca.cert))
    procs: list[Proc] = []
    try:
        procs += start_all([*https.values(), *grpcs.values()])
        lb.start().wait_ready(healthy=1)
        two, three, four = (f"127.0.0.{i}:{http_port}" for i in (2, 3, 4))
        grpc_two, grpc_three, grpc_four = (f"127.0.0.{i}:{grpc_port}" for i in (2, 3, 4))

        def health() -> tuple[dict[str, object], dict[str, object]]:
            status = lb.status()
            return ({k: b["health"] for k, b in by_id(status["backends"]).items()},
                    {k: b["health"] for k, b in by_id(status["grpc"]["backends"]).items()})

        wait_until(lambda: health() == ({two: "healthy", three: "unhealthy"},
                                        {grpc_two: "healthy", grpc_three: "unhealthy"}), 15.0,
                   "the backends whose certificates name NAME healthy, the other not")
        status = lb.status()
        backend = by_id(status["backends"])[two]
        assert (backend["url"], backend["server_name"]) == (f"https://{two}", NAME)
        assert backend["discovered_from"] == f"dns+https://{NAME}:{http_port}"
        assert by_id(status["grpc"]["backends"])[grpc_two]["server_name"] == NAME
        logs = lb.logs()
        assert "TLS to a backend failed" in logs and "TLS to a gRPC backend failed" in logs
        assert f"not valid for '{NAME}'" in logs  # checked against the name, not 127.0.0.3

        results = await load(lb.url + "/v1/detect", total=40, concurrency=4)
        assert [r.status for r in results] == [200] * 40, [r.body[:200] for r in results if r.status != 200]
        assert {r.upstream for r in results} == {two}
        with grpc.insecure_channel(f"127.0.0.1:{lb_grpc_port}") as channel:
            assert Counter(call(channel) for _ in range(10)) == {"grpc-2": 10}

        # a record added: it joins once its health check (TLS, checked against NAME) passes
        dns_server.serve("127.0.0.2", "127.0.0.3", "127.0.0.4")
        wait_until(lambda: health() == ({two: "healthy", three: "unhealthy", four: "healthy"},
                                        {grpc_two: "healthy", grpc_three: "unhealthy",
                                         grpc_four: "healthy"}), 15.0, "127.0.0.4 healthy")
        results = await load(lb.url + "/v1/detect", total=60, concurrency=4)
        assert all(r.status == 200 for r in results)
        assert {r.upstream for r in results} == {two, four}
        with grpc.insecure_channel(f"127.0.0.1:{lb_grpc_port}") as channel:
            assert set(call(channel) for _ in range(20)) == {"grpc-2", "grpc-4"}
    finally:
        lb.stop()
        stop_all(procs)

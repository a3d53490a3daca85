"""``--discover`` against a DNS server that answers A records and refuses AAAA queries: dnsmasq
as ``test_lb_dns`` starts it, but without a local zone, so that having no upstream it answers
REFUSED for every AAAA question (as some appliance resolvers do). The A answer is enough, as it is
to ``getaddrinfo``, Envoy and gRPC; the refusing family is logged once, not counted as a failed
resolution, and asked again at every resolution. Skipped only where dnsmasq is not installed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import dns.resolver
import pytest

from harness.procs import free_port, start_all, stop_all
from loadbalancer.discovery import DnsResolver, Resolution
from tests.loadbalancer.harness import LBProc, load
from tests.loadbalancer.test_lb_dns import NAME, TTL, DnsServer, HostBackend, running_dnsmasq

pytestmark = pytest.mark.slow


class ZonelessDnsServer(DnsServer):
    """``DnsServer`` without ``--local=/NAME/``: AAAA questions for the name are refused."""

    def __init__(self, hosts: Path, log: Path) -> None:
        super().__init__(hosts, log)
        self.cmd.remove(f"--local=/{NAME}/")


@pytest.fixture
def refusing_aaaa(tmp_path: Path) -> Iterator[DnsServer]:
    with running_dnsmasq(tmp_path, ZonelessDnsServer) as server:
        yield server


async def test_the_a_answer_is_enough_when_aaaa_is_refused(
    refusing_aaaa: DnsServer, caplog: pytest.LogCaptureFixture
) -> None:
    plain = dns.resolver.Resolver(configure=False)
    plain.nameservers, plain.port, plain.lifetime = ["127.0.0.1"], refusing_aaaa.port, 1.0
    with pytest.raises(dns.resolver.NoNameservers, match="REFUSED"):  # what the server does
        plain.resolve(NAME, "AAAA")
    resolver = DnsResolver(f"127.0.0.1:{refusing_aaaa.port}", timeout=1.0)
    expected = Resolution(frozenset({"127.0.0.2", "127.0.0.3"}), TTL)
    with caplog.at_level(logging.INFO, logger="loadbalancer.discovery"):
        for _ in range(3):
            assert await resolver.resolve(NAME) == expected
    warned = [r for r in caplog.records if "one address family fails" in r.getMessage()]
    assert len(warned) == 1 and warned[0].__dict__["family"] == "AAAA"


async def test_discovery_follows_the_a_records(refusing_aaaa: DnsServer) -> None:
    port = free_port()
    two, three = (HostBackend(f"127.0.0.{i}", port, delay_ms=0) for i in (2, 3))
    lb = LBProc([], "--discover", f"dns://{NAME}:{port}", "--dns-server",
                f"127.0.0.1:{refusing_aaaa.port}", "--dns-timeout", "1", "--health-interval", "0.3")
    try:
        start_all([two, three])
        lb.start().wait_ready(healthy=2)
        state = lb.status()
        assert {b["id"] for b in state["backends"]} == {two.id, three.id}
        (name,) = state["discovery"]
        assert name["addresses"] == ["127.0.0.2", "127.0.0.3"]
        assert name["failing"] == 0 and not any(name["failures"].values())
        results = await load(lb.url + "/v1/detect", total=100, concurrency=4, body=b"x" * 64)
        assert all(r.status == 200 for r in results)
        assert {r.upstream for r in results} == {two.id, three.id}
        assert lb.logs().count("one address family fails") == 1
    finally:
        lb.stop()
        stop_all([two, three])

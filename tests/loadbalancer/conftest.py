"""Fixtures of the balancer's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.procs import start_all
from tests.loadbalancer.test_lb_dns import DNSMASQ, NAME, DnsServer


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    """dnsmasq (``test_lb_dns.DnsServer``) answering ``NAME`` with 127.0.0.2 and 127.0.0.3 from
    a hosts file (``serve`` changes them); skipped where dnsmasq is not installed."""
    if DNSMASQ is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq)")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n")
    server = DnsServer(hosts, tmp_path / "dnsmasq.log")
    try:
        yield start_all([server])[0]
    finally:
        server.kill()

"""Fixtures of the balancer's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.loadbalancer.pki import Authority, make_pki
from tests.loadbalancer.test_lb_dns import DnsServer, running_dnsmasq


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[DnsServer]:
    """dnsmasq (``test_lb_dns.DnsServer``) answering ``NAME`` with 127.0.0.2 and 127.0.0.3 from
    a hosts file (``serve`` changes them); skipped where dnsmasq is not installed."""
    with running_dnsmasq(tmp_path) as server:
        yield server


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Authority, Authority]:
    """A test PKI in ``tmp_path``: the CA the tests trust, and a second, unrelated one."""
    return make_pki(tmp_path)

"""``--discover`` against a real DNS server: dnsmasq on a loopback port, serving a name from a
hosts file that the test rewrites (dnsmasq rereads it on SIGHUP), with fake backends on
127.0.0.2-4 (all loopback on Linux), while a steady closed-loop load runs through the balancer.

Added records get traffic within two resolution intervals; a removed record's host finishes its
requests in flight and then gets none; a dead resolver keeps the last good set (and the metrics
and the log say so); no request fails throughout. Skipped only where dnsmasq is not installed.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.exception
import dns.resolver
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import Proc, await_until, free_port, start_all, stop_all, wait_until
from loadbalancer.discovery import DnsResolver, Resolution
from loadbalancer.errors import NameNotFound, ResolverUnavailable
from tests.loadbalancer.harness import BackendProc, LBProc, Result, load

pytestmark = pytest.mark.slow

NAME = "svc.test"
TTL = 1  # dnsmasq's --local-ttl: the resolution interval, dns_min_ttl being below it
SLOW_S = 3.0  # how long the host whose record goes answers: it has requests in flight to finish
DNSMASQ = shutil.which("dnsmasq") or next(
    (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if Path(p).is_file()), None
)


class DnsServer(Proc):
    """dnsmasq on 127.0.0.1:``port``, answering only from ``hosts`` (no upstream, no /etc/hosts),
    with a TTL of ``TTL`` seconds; ready when it answers for ``NAME``."""

    def __init__(self, hosts: Path, log: Path) -> None:
        assert DNSMASQ is not None
        port = free_port()
        cmd = [DNSMASQ, "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
               "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
               f"--local-ttl={TTL}", f"--local=/{NAME}/", "--conf-file=/dev/null",
               "--log-facility=-"]
        super().__init__("dnsmasq", cmd, port, stdout=log, stderr=subprocess.STDOUT,
                         ready_timeout=10.0, stop_timeout=5.0)
        self.hosts = hosts

    def ready(self) -> bool:
        self.check_running()
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], self.port, 0.5
        try:
            return bool(resolver.resolve(NAME, "A"))
        except dns.exception.DNSException:
            return False

    def serve(self, *addresses: str) -> None:
        """Makes ``NAME`` resolve to ``addresses`` (at once: SIGHUP rereads the file)."""
        self.hosts.write_text("".join(f"{a} {NAME}\n" for a in addresses))
        self.signal(signal.SIGHUP)


@contextmanager
def running_dnsmasq(tmp_path: Path, server: type[DnsServer] = DnsServer) -> Iterator[DnsServer]:
    """``server`` answering ``NAME`` with 127.0.0.2 and 127.0.0.3 from a hosts file in
    ``tmp_path`` (``serve`` changes them), killed on exit; skips where dnsmasq is not installed."""
    if DNSMASQ is None:
        pytest.skip("dnsmasq is not installed (apt-get install dnsmasq)")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"127.0.0.2 {NAME}\n127.0.0.3 {NAME}\n")
    proc = server(hosts, tmp_path / "dnsmasq.log")
    try:
        yield start_all([proc])[0]
    finally:
        proc.kill()


class HostBackend(BackendProc):
    """A fake backend on ``host:port`` instead of 127.0.0.1 and a port of its own."""

    def __init__(self, host: str, port: int, *, delay_ms: float) -> None:
        super().__init__(host, delay_ms=delay_ms)
        self.cmd[self.cmd.index("--host") + 1] = host
        self.cmd[self.cmd.index("--port") + 1] = str(port)
        self.port, self.url, self.host = port, f"http://{host}:{port}", host

    @property
    def id(self) -> str:
        return f"{self.host}:{self.port}"


def metric(lb: LBProc, sample: str, **labels: str) -> float | None:
    text = httpx.get(lb.admin_url + "/metrics", timeout=2.0).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def status(lb: LBProc) -> dict[str, Any]:
    return await asyncio.to_thread(lb.status, 2.0)


def by_id(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["id"]: b for b in state["backends"]}


async def test_the_resolver_reads_both_families_and_maps_errors(dns_server: DnsServer) -> None:
    resolver = DnsResolver(f"127.0.0.1:{dns_server.port}", timeout=1.0)
    assert await resolver.resolve(NAME) == Resolution(frozenset({"127.0.0.2", "127.0.0.3"}), TTL)
    dns_server.serve("127.0.0.2", "fd00::2")
    both = Resolution(frozenset({"127.0.0.2", "fd00::2"}), TTL)
    await await_until(lambda: _equals(resolver.resolve(NAME), both), 5.0, "the AAAA record")
    with pytest.raises(NameNotFound):
        await resolver.resolve("missing." + NAME)
    with pytest.raises(ResolverUnavailable):
        await DnsResolver(f"127.0.0.1:{free_port()}", timeout=0.3).resolve(NAME)


async def _equals(answer: Awaitable[Resolution], expected: Resolution) -> bool:
    return await answer == expected


async def _inflight(lb: LBProc, backend_id: str, at_least: int) -> bool:
    return int(by_id(await status(lb)).get(backend_id, {}).get("inflight", 0)) >= at_least


async def holds(condition: bool) -> bool:
    """A condition on this process's own state, as ``await_until`` wants it."""
    return condition


async def test_backends_follow_dns_records_under_load(dns_server: DnsServer) -> None:
    port = free_port()
    # .3 answers slowly, so that it still has requests in flight when its record goes: several
    # at once (it gets fewer than the 16 answers after which the policy would scale its weight
    # down for slowness), each for seconds (no try times out before it answers), so that the
    # balancer holds it as retiring for long enough to be seen doing so
    two, three, four = (HostBackend(f"127.0.0.{i}", port, delay_ms=d) for i, d in
                        ((2, 50), (3, SLOW_S * 1000), (4, 50)))
    source = f"dns://{NAME}:{port}"
    lb = LBProc([two.url], "--discover", source, "--dns-server", f"127.0.0.1:{dns_server.port}",
                "--dns-min-ttl", "0.2", "--dns-max-ttl", "30", "--dns-timeout", "0.5",
                "--health-interval", "0.2", "--slow-start-window", "2",
                "--per-try-factor", "0", "--per-try-timeout", "20")
    backends: list[Proc] = []
    stop, results = asyncio.Event(), list[Result]()
    traffic: asyncio.Task[list[Result]] | None = None
    try:
        backends += start_all([two, three, four])
        lb.start().wait_ready()
        # .2 is configured and also in DNS: registered once, as configured; .3 is discovered
        state = await status(lb)
        assert set(by_id(state)) == {two.id, three.id}
        assert by_id(state)[two.id]["discovered_from"] is None
        assert by_id(state)[three.id]["discovered_from"] == source
        assert state["discovery"][0]["addresses"] == ["127.0.0.2", "127.0.0.3"]
        traffic = asyncio.create_task(load(lb.url + "/v1/detect", stop=stop, into=results,
                                           concurrency=12, body=b"x" * 64))
        await await_until(lambda: holds(len({r.upstream for r in results}) == 2), SLOW_S + 5.0,
                          "traffic on both backends")

        # A record added: traffic within two resolution intervals.
        dns_server.serve("127.0.0.2", "127.0.0.3", "127.0.0.4")
        added = time.monotonic()

        async def four_serves() -> bool:
            return bool(by_id(await status(lb)).get(four.id, {}).get("totals", {}).get("requests"))

        served = await await_until(four_serves, 2 * TTL, f"{four.id} to get traffic")
        assert by_id(await status(lb))[four.id]["discovered_from"] == source
        print(f"added record served after {served - added:.2f}s")

        # A record removed: drained (its requests in flight finish), then removed, no new ones.
        await await_until(lambda: _inflight(lb, three.id, 2), SLOW_S + 5.0,
                          f"requests in flight on {three.id}")
        dns_server.serve("127.0.0.2", "127.0.0.4")
        seen: dict[str, float] = {}

        async def three_retired() -> bool:
            before = time.monotonic()
            backend = by_id(await status(lb)).get(three.id)
            if backend is not None and backend["retiring"] and "inflight" not in seen:
                seen.update(before=before, after=time.monotonic(), inflight=backend["inflight"])
            return backend is None

        await await_until(three_retired, 2 * TTL + SLOW_S + 3.0, f"{three.id} drained and removed")
        assert seen.get("inflight", 0) > 0, "the removed host had no request in flight to finish"
        # they finished on it (and, below, every request succeeded)
        drained = [r for r in results if r.upstream == three.id and r.ended > seen["before"]]
        assert drained, f"none of the {seen['inflight']} requests in flight finished on {three.id}"
        late = [r for r in results if r.upstream == three.id and r.started > seen["after"]]
        assert not late, f"{len(late)} requests went to {three.id} after it was drained"

        # The resolver dies: the last good set stays, and the metrics and the log say so.
        dns_server.kill()
        failures = "yoloserve_lb_dns_resolution_failures_total"
        wait_until(lambda: (metric(lb, failures, name=source, reason="unavailable") or 0) >= 2,
                   10.0, "two failed resolutions")
        state = await status(lb)
        assert set(by_id(state)) == {two.id, four.id}
        assert state["discovery"][0]["addresses"] == ["127.0.0.2", "127.0.0.4"]
        assert state["discovery"][0]["failing"] >= 2
        assert metric(lb, "yoloserve_lb_dns_discovered_backends", name=source) == 2
        assert metric(lb, "yoloserve_lb_dns_failing", name=source) == 1
        assert "keeping the last good set" in lb.logs()
        count = len(results)
        await await_until(lambda: holds(len(results) > count + 20), 5.0, "more answers")
    finally:
        stop.set()
        if traffic is not None:
            await asyncio.wait_for(traffic, 30)
        lb.stop()
        stop_all(backends)
    failed = [r for r in results if r.status != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, e.g. {failed[0].body[:200]!r}"
    upstreams = {r.upstream for r in results}
    assert upstreams == {two.id, three.id, four.id}

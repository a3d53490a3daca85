"""DNS discovery in process, with a fake resolver: the settings, joining (warm at start, after a
passing probe later), retiring (drained, removed once idle), failures keeping the last good set,
TTL bounds, names sharing addresses, configured backends left alone, and a clean stop.
The real resolver against a real DNS server is ``test_lb_dns.py``."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from time import monotonic

import pytest
from click.testing import CliRunner

from loadbalancer.backend import Health, Tuning
from loadbalancer.cli import lb_command
from loadbalancer.cluster import Cluster
from loadbalancer.discovery import Discovery, Resolution
from loadbalancer.errors import ConfigError, DiscoveryError, NameNotFound, ResolverUnavailable
from loadbalancer.policies import make_policy
from loadbalancer.settings import BackendSpec, DiscoverSpec, load_settings

TUNING = Tuning(slow_start_window=10.0)
SVC = DiscoverSpec(name="svc.test", port=80)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("YOLOSERVE_LB_"):
            monkeypatch.delenv(key)


class FakeResolver:
    """Answers each name from ``answers`` (an error is raised); ``resolved(n, name)`` waits for
    ``n`` more resolutions of ``name`` to start, so that the one before the last is applied."""

    def __init__(self, **answers: Resolution | DiscoveryError) -> None:
        self.answers = {name.replace("_", "."): a for name, a in answers.items()}
        self.calls: dict[str, int] = dict.fromkeys(self.answers, 0)
        self._called = asyncio.Condition()

    def set(self, name: str, answer: Resolution | DiscoveryError) -> None:
        self.answers[name] = answer

    async def resolve(self, name: str) -> Resolution:
        async with self._called:
            self.calls[name] += 1
            self._called.notify_all()
        answer = self.answers[name]
        if isinstance(answer, DiscoveryError):
            raise answer
        return answer

    async def resolved(self, more: int = 2, name: str = "svc.test", within: float = 5.0) -> None:
        target = self.calls[name] + more
        async with asyncio.timeout(within), self._called:
            await self._called.wait_for(lambda: self.calls[name] >= target)


def answer(*hosts: str | int, ttl: float = 0.01) -> Resolution:
    """Addresses; an int ``i`` is ``10.0.0.i``."""
    return Resolution(frozenset(h if isinstance(h, str) else f"10.0.0.{h}" for h in hosts), ttl)


def make(
    resolver: FakeResolver, *specs: DiscoverSpec, min_ttl: float = 0.01, max_ttl: float = 0.05
) -> tuple[Cluster, Discovery]:
    cluster = Cluster(make_policy("round_robin"), TUNING)
    return cluster, Discovery(cluster, specs or (SVC,), resolver, min_ttl=min_ttl, max_ttl=max_ttl)


# -- settings ------------------------------------------------------------------------------------


def test_discover_forms_the_environment_and_the_cli() -> None:
    settings = load_settings(discover=("dns://Svc.Test:8000", "dns://svc.test.:8000", "dns://b:1"))
    assert [d.url for d in settings.discover] == ["dns://svc.test:8000", "dns://b:1"]
    os.environ["YOLOSERVE_LB_DISCOVER"] = "dns://a:1, dns://b:2"
    try:
        assert [d.url for d in load_settings().discover] == ["dns://a:1", "dns://b:2"]
    finally:
        del os.environ["YOLOSERVE_LB_DISCOVER"]
    help_text = CliRunner().invoke(lb_command, ["--help"]).output
    for flag in ("--discover dns[+https]://NAME:PORT", "--discover-grpc dns[+https]://NAME:PORT",
                 "--dns-server", "--dns-min-ttl", "--dns-max-ttl"):
        assert flag in help_text


def test_dns_https_discovers_https_backends_checked_against_the_name() -> None:
    settings = load_settings(discover=["dns+https://Svc.Test:8443", "dns+http://plain.test:80"],
                             discover_grpc=[{"name": "grpc.test", "port": 8001, "scheme": "https"}])
    assert [(d.url, d.tls) for d in settings.discover] == [("dns+https://svc.test:8443", True),
                                                          ("dns://plain.test:80", False)]
    assert settings.discover_grpc == [DiscoverSpec(name="grpc.test", port=8001, scheme="https")]
    # the same name and port as HTTP and as HTTPS: the same addresses, two ways: refused
    with pytest.raises(ConfigError, match="name the same backends"):
        load_settings(discover=["dns://svc.test:80", "dns+https://svc.test:80"])


@pytest.mark.parametrize(
    "text",
    ["svc:80", "dns://svc", "dns://svc:0", "dns://svc:80/x", "http://svc:80", "dns://a b:80", "dns://:80",
     "https://svc:443", "dns+ftp://svc:80", "dns+https://svc:443?sni=x"],
)
def test_bad_discover_specs_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(discover=[text])


@pytest.mark.parametrize(
    ("given", "kept"),
    [("127.0.0.1:5353", "127.0.0.1:5353"), ("10.0.0.1", "10.0.0.1:53"), ("::1", "[::1]:53"),
     ("[::1]:5353", "[::1]:5353")],
)
def test_dns_server_forms(given: str, kept: str) -> None:
    assert load_settings(dns_server=given).dns_server == kept


@pytest.mark.parametrize(
    "overrides",
    [
        {"dns_server": "ns.example:53"},
        {"dns_server": "127.0.0.1:99999"},
        {"dns_min_ttl": 10, "dns_max_ttl": 5},
        {"backends": ["http://svc.test:80"], "discover": ["dns://svc.test:80"]},
    ],
)
def test_bad_discovery_settings_are_config_errors(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        load_settings(**overrides)


def test_config_file_takes_discover_entries(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(
        "backends: [http://127.0.0.1:9000]\n"
        "discover:\n  - dns://svc.test:8000\n  - {name: other.test, port: 9000}\n"
        "dns-server: 127.0.0.1:5353\ndns-max-ttl: 10\n"
    )
    settings = load_settings(config=path)
    assert [d.url for d in settings.discover] == ["dns://svc.test:8000", "dns://other.test:9000"]
    assert (settings.dns_server, settings.dns_max_ttl) == ("127.0.0.1:5353", 10.0)


# -- following names -----------------------------------------------------------------------------


async def test_the_first_answer_joins_warm_later_ones_after_a_passing_probe() -> None:
    resolver = FakeResolver(svc_test=answer(1, 2))
    cluster, discovery = make(resolver)
    async with discovery:
        now = monotonic()
        assert set(cluster.backends) == {"10.0.0.1:80", "10.0.0.2:80"}
        first = cluster.backends["10.0.0.1:80"]
        assert first.routable(now) and first.slow_start_factor(now) == 1.0
        assert first.discovered_from == "dns://svc.test:80"
        resolver.set("svc.test", answer(1, 2, 3))
        await resolver.resolved()
        new = cluster.backends["10.0.0.3:80"]
        assert new.health is Health.PENDING and not new.routable(monotonic())
        assert new not in cluster.candidates(monotonic()) and not cluster.panic
        cluster.report_probe(new, Health.HEALTHY, monotonic())
        assert new.routable(monotonic()) and new.slow_start_factor(monotonic()) < 1.0
        assert new.snapshot(monotonic(), 0.0)["state"] == "slow_start"


async def test_dns_https_addresses_are_https_backends_named_by_the_dns_name() -> None:
    resolver = FakeResolver(svc_test=answer(1, "fd00::2"))
    spec = DiscoverSpec(name="svc.test", port=8443, scheme="https")
    cluster, discovery = make(resolver, spec)
    async with discovery:
        assert set(cluster.backends) == {"10.0.0.1:8443", "[fd00::2]:8443"}
        for backend in cluster.backends.values():
            assert backend.tls and backend.server_name == "svc.test"
            assert backend.discovered_from == "dns+https://svc.test:8443"
        assert cluster.backends["10.0.0.1:8443"].url == "https://10.0.0.1:8443"
        snapshot = cluster.backends["[fd00::2]:8443"].snapshot(monotonic(), 0.0)
        assert (snapshot["url"], snapshot["server_name"]) == ("https://[fd00::2]:8443", "svc.test")


def test_a_backend_names_its_certificate_only_over_https() -> None:
    named = BackendSpec(url="https://10.0.0.1:443", server_name="Svc.Test.")
    assert (named.server_name, named.verified_name) == ("svc.test", "svc.test")
    assert BackendSpec(url="https://10.0.0.1:443").verified_name == "10.0.0.1"
    with pytest.raises(ValueError, match="for https://"):
        BackendSpec(url="http://10.0.0.1:80", server_name="svc.test")
    with pytest.raises(ValueError, match="not a DNS name"):
        BackendSpec(url="https://10.0.0.1:443", server_name="a b")


async def test_a_gone_address_is_drained_then_removed_once_idle() -> None:
    resolver = FakeResolver(svc_test=answer(1, 2, 3))
    cluster, discovery = make(resolver)
    async with discovery:
        busy, idle = cluster.backends["10.0.0.2:80"], cluster.backends["10.0.0.3:80"]
        busy.inflight = 2
        resolver.set("svc.test", answer(1))
        await resolver.resolved()
        assert "10.0.0.3:80" not in cluster.backends and idle.removed  # idle: removed at once
        assert busy.retiring and busy.admin_draining and busy.id in cluster.backends
        assert busy not in cluster.candidates(monotonic())
        assert busy.snapshot(monotonic(), 0.0)["state"] == "draining"
        busy.inflight -= 1
        cluster.idle(busy)  # what an exchange does when its attempt ends: not idle yet
        assert busy.id in cluster.backends
        busy.inflight -= 1
        cluster.idle(busy)
        assert busy.id not in cluster.backends and busy.removed


async def test_an_address_back_before_it_was_idle_is_undrained() -> None:
    resolver = FakeResolver(svc_test=answer(1, 2))
    cluster, discovery = make(resolver)
    async with discovery:
        backend = cluster.backends["10.0.0.2:80"]
        backend.inflight = 1
        resolver.set("svc.test", answer(1))
        await resolver.resolved()
        assert backend.retiring
        resolver.set("svc.test", answer(1, 2))
        await resolver.resolved()
        assert cluster.backends["10.0.0.2:80"] is backend
        assert not backend.retiring and not backend.admin_draining and backend.routable(monotonic())


async def test_a_failing_resolver_keeps_the_last_good_set(caplog: pytest.LogCaptureFixture) -> None:
    resolver = FakeResolver(svc_test=answer(1, 2))
    cluster, discovery = make(resolver)
    caplog.set_level(logging.INFO, "loadbalancer.discovery")
    async with discovery:
        for failure in (ResolverUnavailable("timed out"), NameNotFound("no such name")):
            resolver.set("svc.test", failure)
            await resolver.resolved()
            assert set(cluster.backends) == {"10.0.0.1:80", "10.0.0.2:80"}
            assert not any(b.retiring for b in cluster.backends.values())
        [state] = discovery.snapshot()
        assert state["addresses"] == ["10.0.0.1", "10.0.0.2"] and state["failing"] >= 2
        assert state["failures"]["unavailable"] >= 1 and state["failures"]["not_found"] >= 1
        assert state["last_error"] == "no such name"
        assert 0.0 <= state["next_resolution_in_s"] <= 0.05  # backing off, within dns_max_ttl
        assert "keeping the last good set" in caplog.text
        resolver.set("svc.test", answer(2))
        await resolver.resolved()
        assert discovery.snapshot()[0]["failing"] == 0 and "recovered" in caplog.text
        assert set(cluster.backends) == {"10.0.0.2:80"}


@pytest.mark.parametrize(("ttl", "low", "high"), [(0.0, 5.0, 5.0), (12.0, 11.0, 12.0), (1e6, 29.0, 30.0)])
async def test_the_next_resolution_follows_the_ttl_within_the_bounds(
    ttl: float, low: float, high: float
) -> None:
    _, discovery = make(FakeResolver(svc_test=answer(1, ttl=ttl)), min_ttl=5.0, max_ttl=30.0)
    async with discovery:
        assert low <= discovery.snapshot()[0]["next_resolution_in_s"] <= high


async def test_configured_backends_are_never_registered_twice_nor_retired() -> None:
    resolver = FakeResolver(svc_test=answer(1, 2))
    cluster, discovery = make(resolver)
    static = cluster.add(BackendSpec(url="http://10.0.0.1:80"), monotonic(), warm=True)
    async with discovery:
        assert set(cluster.backends) == {"10.0.0.1:80", "10.0.0.2:80"}
        assert cluster.backends["10.0.0.1:80"] is static and static.discovered_from is None
        resolver.set("svc.test", answer(2))
        await resolver.resolved()
        assert cluster.backends["10.0.0.1:80"] is static and not static.retiring
        # SIGHUP's reconcile leaves the discovered ones alone, and adopts one it lists
        discovered = cluster.backends["10.0.0.2:80"]
        assert cluster.reconcile([BackendSpec(url="http://10.0.0.9:80")], monotonic()) == (1, 1, 0)
        assert cluster.backends["10.0.0.2:80"] is discovered
        cluster.reconcile([BackendSpec(url="http://10.0.0.2:80")], monotonic())
        assert discovered.discovered_from is None


async def test_names_sharing_an_address_register_it_once_ipv6_in_brackets() -> None:
    other = DiscoverSpec(name="other.test", port=80)
    resolver = FakeResolver(svc_test=answer(1, "fd00::1"), other_test=answer("fd00::1", 3))
    cluster, discovery = make(resolver, SVC, other)
    async with discovery:
        assert set(cluster.backends) == {"10.0.0.1:80", "[fd00::1]:80", "10.0.0.3:80"}
        shared = cluster.backends["[fd00::1]:80"]
        assert shared.url == "http://[fd00::1]:80" and shared.discovered_from == SVC.url
        resolver.set("svc.test", answer(1))
        await resolver.resolved()
        assert not shared.retiring and shared.discovered_from == other.url
        assert [s["addresses"] for s in discovery.snapshot()] == [["10.0.0.1"], ["10.0.0.3", "fd00::1"]]


async def test_an_admin_delete_is_undone_by_the_next_answer() -> None:
    resolver = FakeResolver(svc_test=answer(1))
    cluster, discovery = make(resolver)
    async with discovery:
        cluster.remove("10.0.0.1:80")
        await resolver.resolved()
        assert cluster.backends["10.0.0.1:80"].health is Health.PENDING


async def test_a_failed_first_resolution_starts_empty_and_stops_cleanly() -> None:
    resolver = FakeResolver(svc_test=ResolverUnavailable("down"))
    cluster, discovery = make(resolver)
    await discovery.start()
    assert not cluster.backends
    resolver.set("svc.test", answer(1))
    await resolver.resolved()
    assert cluster.backends["10.0.0.1:80"].health is Health.PENDING  # not the start: probe first
    await discovery.aclose()
    calls = dict(resolver.calls)
    assert asyncio.all_tasks() == {asyncio.current_task()}
    await asyncio.sleep(0.05)  # several TTLs: nothing resolves any more
    assert resolver.calls == calls

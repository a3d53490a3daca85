"""Backends found by DNS: ``--discover dns://NAME:PORT`` (or ``dns+https://``) follows a name's A
and AAAA records (a Kubernetes headless Service gives one per ready pod), one task per name.

Each task resolves its name again when the answer's TTL runs out, bounded below and above by
``dns_min_ttl`` and ``dns_max_ttl`` (a timer on monotonic time, no polling), and the cluster follows
the union of every name's addresses:

- an address that appears joins once a health check passes, then with slow start;
- one that is gone is retired: drained (its requests in flight finish, it gets no new ones) and
  removed once idle; back in DNS before that, it is simply un-drained;
- a failed resolution (no answer in time, SERVFAIL, NXDOMAIN, an empty answer) keeps the last good
  set; it is logged, counted per name and reason, and retried sooner (``dns_min_ttl``, doubling
  up to ``dns_max_ttl``);
- A and AAAA are asked in parallel, and one family's answer is enough, as ``getaddrinfo``, Envoy
  and gRPC take it: a resolver that refuses AAAA (dnsmasq without an upstream, some appliances)
  does not hide the A records. The failing family keeps its last good addresses, is asked again
  at every resolution, and is logged once when it starts failing and once when it recovers; the
  resolution itself counts as a success.

Configured backends (``--backend``, the admin API, SIGHUP) are never touched by discovery, and an
address that one of them already has is not registered twice.

``dns+https://NAME:PORT`` makes the addresses ``https://`` backends. Their certificates cannot
name an address that the next pod may get, so each is checked against NAME, which is also the
SNI of its connections (Envoy's ``auto_sni`` on a DNS cluster; a Kubernetes certificate lists
the headless Service's name).

The resolver is a one-method extension point (:class:`Resolver`); :class:`DnsResolver` is
dnspython's async resolver, its errors mapped to :class:`DiscoveryError` at this boundary.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Protocol

import dns.asyncresolver
import dns.exception
import dns.resolver

from loadbalancer.cluster import Cluster
from loadbalancer.errors import ConfigError, DiscoveryError, NameNotFound, ResolverUnavailable
from loadbalancer.settings import BackendSpec, DiscoverSpec, parse_host_port

__all__ = ["FAILURE_KINDS", "DiscoveredName", "Discovery", "DnsResolver", "Resolution", "Resolver"]

log = logging.getLogger("loadbalancer.discovery")
FAILURE_KINDS = (NameNotFound.kind, ResolverUnavailable.kind, DiscoveryError.kind)


@dataclass(frozen=True, slots=True)
class Resolution:
    """A name's addresses (IPv4 and IPv6, as text) and the seconds the answer may be kept."""

    addresses: frozenset[str]
    ttl: float


class Resolver(Protocol):
    async def resolve(self, name: str) -> Resolution:
        """The name's A and AAAA records; raises :class:`DiscoveryError` (and nothing else)."""
        ...


class DnsResolver:
    """dnspython's async resolver: ``server`` (``IP[:PORT]``) or, without one, the nameservers
    and search list of ``/etc/resolv.conf``; ``timeout`` bounds one resolution; no cache (the
    TTLs are followed here)."""

    def __init__(self, server: str | None, timeout: float) -> None:
        try:
            resolver = dns.asyncresolver.Resolver(configure=server is None)
        except dns.exception.DNSException as exc:  # no resolv.conf, or no nameserver in it
            raise ConfigError(f"no system DNS resolver ({exc}); give --dns-server") from exc
        if server is not None:
            host, port = parse_host_port(server)
            resolver.nameservers = [host]
            resolver.port = port
        resolver.lifetime = timeout
        resolver.cache = None
        self._resolver = resolver
        self._last: dict[tuple[str, str], list[str]] = {}  # (name, family): last good addresses
        self._failing: dict[tuple[str, str], str] = {}  # (name, family): the error logged

    async def resolve(self, name: str) -> Resolution:
        """Both record types at once; the resolution succeeds when either answers (the other
        keeps its last good addresses) and fails, with the first error, when neither does."""
        families = ("A", "AAAA")
        answers = await asyncio.gather(
            *(self._query(name, family) for family in families), return_exceptions=True
        )
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, DiscoveryError):
                raise answer
        errors = [a for a in answers if isinstance(a, DiscoveryError)]
        if len(errors) == len(families):
            raise errors[0]  # the name's failure, not a family's
        addresses: set[str] = set()
        ttls: list[float] = []
        for family, answer in zip(families, answers, strict=True):
            if isinstance(answer, DiscoveryError):
                self._family_failed(name, family, answer)
                addresses.update(self._last.get((name, family), ()))
            elif not isinstance(answer, BaseException):
                found, ttl = answer
                self._family_answered(name, family, found)
                addresses.update(found)
                if ttl is not None:
                    ttls.append(ttl)
        if not addresses:
            raise errors[0] if errors else NameNotFound(f"{name} has no A or AAAA records")
        return Resolution(frozenset(addresses), min(ttls, default=0.0))

    def _family_failed(self, name: str, family: str, error: DiscoveryError) -> None:
        key = (name, family)
        if key not in self._failing:
            log.warning(
                "DNS: one address family fails; using the other's answer (asked again at every "
                "resolution)",
                extra={"dns_name": name, "family": family, "error": str(error),
                       "kept": self._last.get(key, [])},
            )
        self._failing[key] = str(error)

    def _family_answered(self, name: str, family: str, found: list[str]) -> None:
        key = (name, family)
        self._last[key] = found
        if self._failing.pop(key, None) is not None:
            log.info("DNS: the address family answers again", extra={"dns_name": name, "family": family})

    async def _query(self, name: str, rdtype: str) -> tuple[list[str], float | None]:
        try:
            answer = await self._resolver.resolve(name, rdtype, search=True, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            raise NameNotFound(f"{name}: no such name") from exc
        except (dns.resolver.NoNameservers, dns.exception.Timeout, OSError) as exc:
            raise ResolverUnavailable(f"{name}: {exc}") from exc
        except dns.exception.DNSException as exc:
            raise DiscoveryError(f"{name}: {exc}") from exc
        rrset = answer.rrset
        if rrset is None:  # the name exists, without records of this type
            return [], None
        return [rdata.to_text() for rdata in rrset], float(rrset.ttl)


@dataclass(slots=True)
class DiscoveredName:
    """One followed name: its last good set of addresses and how resolving it goes."""

    spec: DiscoverSpec
    addresses: frozenset[str] = frozenset()
    resolutions: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    failing: int = 0  # failures in a row
    last_error: str | None = None
    last_success: float | None = None  # monotonic
    next_at: float | None = None  # monotonic

    def snapshot(self, now: float) -> dict[str, Any]:
        """As ``GET /lb/status`` shows it."""
        ago = None if self.last_success is None else round(now - self.last_success, 3)
        due = None if self.next_at is None else round(max(self.next_at - now, 0.0), 3)
        return {
            "name": self.spec.url,
            "addresses": sorted(self.addresses),
            "resolutions": self.resolutions,
            "failures": dict(self.failures),
            "failing": self.failing,
            "last_error": self.last_error,
            "last_success_ago_s": ago,
            "next_resolution_in_s": due,
        }


class Discovery:
    """Follows ``specs`` with ``resolver``, making ``cluster`` follow their addresses.

    ``async with`` or :meth:`start` / :meth:`aclose`: start resolves every name once (those
    backends join like configured ones: routable at once, without slow start), then follows each
    in a task of its own until closed.
    """

    def __init__(
        self,
        cluster: Cluster,
        specs: Sequence[DiscoverSpec],
        resolver: Resolver,
        *,
        min_ttl: float,
        max_ttl: float,
    ) -> None:
        self.cluster = cluster
        self.names = [DiscoveredName(spec) for spec in specs]
        self.resolver = resolver
        self.min_ttl, self.max_ttl = min_ttl, max_ttl
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """The first resolution of every name (each bounded by the resolver's timeout), then a
        task per name."""
        delays = await asyncio.gather(*(self._refresh(name, initial=True) for name in self.names))
        loop = asyncio.get_running_loop()
        for name, delay in zip(self.names, delays, strict=True):
            self._spawn(loop, self._follow(name, delay))

    async def aclose(self) -> None:
        """Stops following (the backends found stay, as they are)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def snapshot(self) -> list[dict[str, Any]]:
        now = monotonic()
        return [name.snapshot(now) for name in self.names]

    # -- following -----------------------------------------------------------------------------
    def _spawn(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[None, None, None]) -> None:
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("DNS discovery stopped following a name", exc_info=task.exception())

    async def _follow(self, name: DiscoveredName, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)  # a timer until the answer expires (or the retry is due)
            delay = await self._refresh(name)

    async def _refresh(self, name: DiscoveredName, *, initial: bool = False) -> float:
        """Resolves ``name`` once and applies the answer; returns the seconds until the next."""
        name.resolutions += 1
        try:
            found = await self.resolver.resolve(name.spec.name)
        except DiscoveryError as exc:
            delay = self._failed(name, exc)
        else:
            delay = self._resolved(name, found, initial=initial)
        name.next_at = monotonic() + delay
        return delay

    def _resolved(self, name: DiscoveredName, found: Resolution, *, initial: bool) -> float:
        if name.failing:
            log.info("DNS resolution recovered", extra={"discover": name.spec.url, "failed": name.failing})
        name.failing, name.last_error, name.last_success = 0, None, monotonic()
        if found.addresses != name.addresses:
            log.info(
                "discovered addresses changed",
                extra={
                    "discover": name.spec.url,
                    "added": sorted(found.addresses - name.addresses),
                    "gone": sorted(name.addresses - found.addresses),
                },
            )
            name.addresses = found.addresses
        self._apply(warm=initial)  # also when unchanged: puts back one deleted through the admin API
        return min(max(found.ttl, self.min_ttl), self.max_ttl)

    def _failed(self, name: DiscoveredName, exc: DiscoveryError) -> float:
        name.failing += 1
        name.failures[exc.kind] += 1
        name.last_error = str(exc)
        delay = min(self.min_ttl * 2.0 ** min(name.failing - 1, 30), self.max_ttl)
        log.warning(
            "DNS resolution failed; keeping the last good set",
            extra={
                "discover": name.spec.url,
                "reason": exc.kind,
                "error": str(exc),
                "kept": sorted(name.addresses),
                "failures_in_a_row": name.failing,
                "retry_in_s": delay,
            },
        )
        return delay

    def _apply(self, *, warm: bool) -> None:
        """Makes the discovered backends the union of every name's last good set."""
        now = monotonic()
        wanted: dict[str, tuple[BackendSpec, str]] = {}
        for name in self.names:
            for spec in _backend_specs(name.addresses, name.spec):
                wanted.setdefault(spec.id, (spec, name.spec.url))
        cluster = self.cluster
        for backend_id, (spec, source) in wanted.items():
            backend = cluster.backends.get(backend_id)
            if backend is None:
                cluster.add(spec, now, warm=warm, probe_first=not warm, discovered_from=source)
            elif backend.discovered_from is not None:  # a configured one stays configured
                backend.discovered_from = source
                if backend.retiring:  # back in DNS before it was idle
                    cluster.update(backend_id, weight=None, drain=False)
        for backend in list(cluster.backends.values()):
            gone = backend.id not in wanted and backend.discovered_from is not None
            if gone and not backend.retiring:
                log.info(
                    "backend gone from DNS: draining, removed once idle",
                    extra={"backend": backend.id, "discover": backend.discovered_from},
                )
                cluster.retire(backend.id)


def _backend_specs(addresses: Iterable[str], followed: DiscoverSpec) -> list[BackendSpec]:
    """``http://ADDRESS:PORT`` for each address (IPv6 in brackets), in a stable order; with
    ``dns+https://``, ``https://ADDRESS:PORT`` whose certificate must name the DNS name."""
    scheme = followed.scheme
    server_name = followed.name if followed.tls else None
    specs = []
    for text in sorted(addresses):
        address = ipaddress.ip_address(text)
        host = f"[{address.compressed}]" if address.version == 6 else address.compressed
        specs.append(BackendSpec(url=f"{scheme}://{host}:{followed.port}", server_name=server_name))
    return specs

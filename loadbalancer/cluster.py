"""The set of backends: choosing one (panic threshold, exclusions, back-off), outlier ejection,
and the changes the admin API, SIGHUP and DNS discovery make."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from loadbalancer.backend import Backend, Health, Tuning
from loadbalancer.errors import BackendExists, BackendNotFound
from loadbalancer.policies import ChoiceContext, Policy
from loadbalancer.settings import BackendSpec

__all__ = ["Cluster", "Watcher"]

log = logging.getLogger("loadbalancer.cluster")
ROUTING_MAX_AGE = 1.0  # seconds a routing snapshot lives at most
SLOW_START_STEP = 0.1  # effective weights in slow start are refreshed this often


class Watcher(Protocol):
    """Told when backends join and leave (pools and health checks hang off this)."""

    def added(self, backend: Backend) -> None: ...

    def removed(self, backend: Backend) -> None: ...


@dataclass(slots=True)
class _Routing:
    """Who may get requests, and their effective weights: rebuilt only when something changed
    (``Cluster.version``) or a time-based change is due (ejection or back-off end, slow start)."""

    fresh: list[Backend]
    fresh_weights: list[float]
    backing_off: list[Backend]  # 503 Retry-After: a last resort
    backing_off_weights: list[float]
    valid_until: float
    version: int


class Cluster:
    def __init__(
        self,
        policy: Policy,
        tuning: Tuning,
        *,
        panic_threshold: float = 50.0,
        max_ejection_percent: float = 50.0,
    ) -> None:
        self.policy = policy
        self.tuning = tuning
        self.panic_threshold = panic_threshold / 100.0
        self.max_ejection_percent = max_ejection_percent / 100.0
        self.backends: dict[str, Backend] = {}
        self.watchers: list[Watcher] = []
        self.panic = False
        self.version = 0  # bumped by every change that can alter routing
        self._routing: _Routing | None = None

    # -- choosing ------------------------------------------------------------------------------
    def candidates(self, now: float) -> list[Backend]:
        """Routable backends; all willing ones in panic (fewer healthy than the threshold)."""
        routing = self._current(now)
        return routing.fresh + routing.backing_off

    def choose(
        self,
        now: float,
        exclude: Collection[Backend] = (),
        *,
        allow_backoff: bool = True,
        key: bytes | None = None,
    ) -> Backend | None:
        """A backend not in ``exclude``; one backing off (503 Retry-After) only as a last
        resort and only when ``allow_backoff``. ``key`` (a stream id) goes to the policy, which
        a consistent hash places the request by."""
        routing = self._current(now)
        chosen = self._pick(routing.fresh, routing.fresh_weights, exclude, now, key)
        if chosen is None and allow_backoff:
            chosen = self._pick(routing.backing_off, routing.backing_off_weights, exclude, now, key)
        return chosen

    def _pick(
        self,
        candidates: list[Backend],
        weights: list[float],
        exclude: Collection[Backend],
        now: float,
        key: bytes | None,
    ) -> Backend | None:
        if exclude:
            keep = [i for i, b in enumerate(candidates) if b not in exclude]
            candidates, weights = [candidates[i] for i in keep], [weights[i] for i in keep]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        return self.policy.choose(ChoiceContext(candidates, weights, now, key, self.backends, self.version))

    def _current(self, now: float) -> _Routing:
        routing = self._routing
        if routing is None or routing.version != self.version or now >= routing.valid_until:
            routing = self._routing = self._build(now)
        return routing

    def _build(self, now: float) -> _Routing:
        # Draining ones and new ones not probed yet (Envoy's ignore_new_hosts_until_first_hc) do
        # not count towards the panic threshold.
        pool = [
            b for b in self.backends.values() if not b.admin_draining and b.health is not Health.PENDING
        ]
        healthy = [b for b in pool if b.routable(now)]
        self.panic = len(healthy) < self.panic_threshold * len(pool)
        candidates = [b for b in pool if b.willing()] if self.panic else healthy
        fresh = [b for b in candidates if b.backoff_until <= now]
        off = [b for b in candidates if b.backoff_until > now]
        until = now + ROUTING_MAX_AGE
        for b in self.backends.values():
            for moment in (b.ejected_until, b.backoff_until):
                if moment > now:
                    until = min(until, moment)
            if b.slow_start_factor(now) < 1.0:
                until = min(until, now + SLOW_START_STEP)
        return _Routing(
            fresh,
            [b.effective_weight(now) for b in fresh],
            off,
            [b.effective_weight(now) for b in off],
            until,
            self.version,
        )

    # -- passive outlier detection -------------------------------------------------------------
    def report_failure(self, backend: Backend, kind: str, now: float, *, outlier: bool) -> None:
        """Counts a failure; ejects after enough in a row unless too many are ejected already."""
        backend.record_error(kind)
        if not outlier or backend.ejected(now) or not backend.record_failure():
            return
        ejected = sum(1 for b in self.backends.values() if b.ejected(now))
        allowed = max(1, math.floor(self.max_ejection_percent * len(self.backends)))
        if ejected >= allowed:
            log.warning(
                "ejection skipped: max ejection percent reached",
                extra={"backend": backend.id, "ejected": ejected},
            )
            return
        duration = backend.eject(now)
        self.version += 1
        log.warning(
            "backend ejected",
            extra={"backend": backend.id, "seconds": duration, "reason": kind},
        )

    def report_probe(self, backend: Backend, observed: Health, now: float) -> None:
        was_ejected = backend.ejected(now)
        changed = backend.apply_probe(observed, now)
        self.version += 1
        if changed is not None:
            log.info("backend health changed", extra={"backend": backend.id, "health": changed})
        elif was_ejected and not backend.ejected(now):
            log.info("backend un-ejected by a passing health check", extra={"backend": backend.id})

    def back_off(self, backend: Backend, retry_after: float, now: float) -> None:
        """A 503 with Retry-After: no new requests there for that long, unless no one else."""
        backend.back_off(retry_after, now)
        self.version += 1

    # -- changes -------------------------------------------------------------------------------
    def get(self, backend_id: str) -> Backend:
        try:
            return self.backends[backend_id]
        except KeyError:
            raise BackendNotFound(f"no backend {backend_id!r}") from None

    def add(
        self,
        spec: BackendSpec,
        now: float,
        *,
        warm: bool = False,
        probe_first: bool = False,
        discovered_from: str | None = None,
    ) -> Backend:
        """Adds a backend; ``warm`` skips slow start (the ones configured at start-up);
        ``probe_first`` keeps it out of routing until a health check passes."""
        if spec.id in self.backends:
            raise BackendExists(f"backend {spec.id!r} already exists")
        backend = Backend(
            spec, self.tuning, now=now, warm=warm, probe_first=probe_first, discovered_from=discovered_from
        )
        self.backends[backend.id] = backend
        self.version += 1
        for watcher in self.watchers:
            watcher.added(backend)
        log.info("backend added", extra={"backend": backend.id, "weight": backend.weight})
        return backend

    def remove(self, backend_id: str) -> Backend:
        """Removes at once from routing; its in-flight requests finish."""
        backend = self.backends.pop(self.get(backend_id).id)
        backend.removed = True
        self.version += 1
        for watcher in self.watchers:
            watcher.removed(backend)
        log.info("backend removed", extra={"backend": backend.id, "inflight": backend.inflight})
        return backend

    def retire(self, backend_id: str) -> Backend:
        """Drains a backend, then removes it once idle: no new requests; those in flight finish
        (:meth:`idle` removes it when the last one ends)."""
        backend = self.get(backend_id)
        if backend.inflight == 0:
            return self.remove(backend.id)
        self.update(backend.id, weight=None, drain=True)
        backend.retiring = True
        return backend

    def idle(self, backend: Backend) -> None:
        """Removes a retiring backend once its last request in flight has ended."""
        if backend.retiring and backend.inflight == 0 and self.backends.get(backend.id) is backend:
            self.remove(backend.id)

    def update(self, backend_id: str, *, weight: int | None, drain: bool | None) -> Backend:
        backend = self.get(backend_id)
        if weight is not None:
            backend.weight = weight
        if drain is not None:
            backend.admin_draining = drain
        if drain is False:
            backend.retiring = False
        self.version += 1
        log.info(
            "backend updated",
            extra={
                "backend": backend.id,
                "weight": backend.weight,
                "draining": backend.admin_draining,
            },
        )
        return backend

    def reconcile(self, specs: Iterable[BackendSpec], now: float) -> tuple[int, int, int]:
        """Makes the configured set equal to ``specs`` (SIGHUP), leaving the backends found by
        DNS to their discovery (one listed in ``specs`` becomes configured); returns (added,
        removed, updated)."""
        wanted = {spec.id: spec for spec in specs}
        removed = [
            bid for bid, b in self.backends.items() if bid not in wanted and b.discovered_from is None
        ]
        for bid in removed:
            self.remove(bid)
        added = updated = 0
        for bid, spec in wanted.items():
            current = self.backends.get(bid)
            if current is None:
                self.add(spec, now)
                added += 1
                continue
            current.discovered_from = None
            if current.weight != spec.weight or current.admin_draining:
                self.update(bid, weight=spec.weight, drain=False)
                updated += 1
        return added, len(removed), updated

"""One backend's state: health, in-flight, outlier ejection, slow start, latency, totals.

All times are ``time.monotonic()`` seconds (the base of ``loop.time()``), passed in as ``now``
so that the rules are plain functions of the state and testable without a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from math import exp as _exp
from math import expm1 as _expm1
from typing import TYPE_CHECKING, Any

from loadbalancer.settings import BackendSpec, LBSettings
from loadbalancer.stats import Histogram

if TYPE_CHECKING:
    from loadbalancer.upstream import UpstreamPool

__all__ = ["ROUTABLE", "Backend", "Health", "Tuning"]

EWMA_DECAY_S = 10.0  # Finagle's peak-EWMA decay time
EWMA_INITIAL_S = 0.010
# The typical latency (a plain EWMA per answer) behind the load-aware policies' speed factors: one
# answer moves it by at least this fraction, so that a single stall barely moves it and a lasting
# change takes some tens of answers to show ...
TYPICAL_ALPHA = 0.04
# ... and by more when answers are rare (1 - exp(-gap / this)): a backend that gets few requests
# because it was slow is re-measured within a few answers once it is fast again.
TYPICAL_TAU_S = 5.0


class Health(StrEnum):
    """What active health checks last concluded."""

    UNKNOWN = "unknown"  # not probed yet: routable
    PENDING = "pending"  # not probed yet, and not routable until a probe passes (found by DNS)
    HEALTHY = "healthy"
    OVERLOADED = "overloaded"  # answering 503 overloaded: routable at reduced weight
    STARTING = "starting"  # answering 503 starting: no new requests
    DRAINING = "draining"  # answering 503 draining: no new requests
    UNHEALTHY = "unhealthy"  # probes failing: no new requests


ROUTABLE = frozenset({Health.UNKNOWN, Health.HEALTHY, Health.OVERLOADED})
WILLING = frozenset({Health.UNKNOWN, Health.HEALTHY, Health.OVERLOADED, Health.UNHEALTHY})


@dataclass(frozen=True, slots=True)
class Tuning:
    """The numbers the per-backend rules need, taken from :class:`LBSettings`."""

    healthy_threshold: int = 2
    unhealthy_threshold: int = 2
    overloaded_weight: float = 0.25
    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    slow_start_window: float = 30.0
    slow_start_aggression: float = 1.0
    slow_start_min_weight: float = 0.1
    retry_after_cap: float = 30.0

    @classmethod
    def from_settings(cls, s: LBSettings) -> Tuning:
        return cls(
            healthy_threshold=s.healthy_threshold,
            unhealthy_threshold=s.unhealthy_threshold,
            overloaded_weight=s.overloaded_weight,
            consecutive_failures=s.outlier_consecutive_failures,
            base_ejection=s.outlier_base_ejection,
            max_ejection=s.outlier_max_ejection,
            slow_start_window=s.slow_start_window,
            slow_start_aggression=s.slow_start_aggression,
            slow_start_min_weight=s.slow_start_min_weight_percent / 100.0,
            retry_after_cap=s.retry_after_cap,
        )


class Backend:
    """A backend and everything the balancer knows about it."""

    __slots__ = (
        "_failures",
        "_successes",
        "active_since",
        "admin_draining",
        "backoff_until",
        "consecutive_failures",
        "discovered_from",
        "ejected_until",
        "ejection_count",
        "ejections_total",
        "errors",
        "ewma",
        "ewma_stamp",
        "health",
        "host",
        "id",
        "id_bytes",
        "inflight",
        "latency",
        "pool",
        "port",
        "removed",
        "requests",
        "retiring",
        "server_name",
        "tls",
        "tuning",
        "typical",
        "typical_n",
        "url",
        "weight",
    )

    def __init__(
        self,
        spec: BackendSpec,
        tuning: Tuning,
        *,
        now: float,
        warm: bool,
        probe_first: bool = False,
        discovered_from: str | None = None,
    ) -> None:
        self.id = spec.id
        self.id_bytes = spec.id.encode()
        self.url = spec.url
        self.host = spec.host
        self.port = spec.port
        self.tls = spec.tls  # https://: TLS to it, for requests and health checks alike
        self.server_name = spec.verified_name  # what its certificate must name (and the SNI)
        self.weight = spec.weight
        self.tuning = tuning
        self.health = Health.PENDING if probe_first else Health.UNKNOWN
        self._successes = 0
        self._failures = 0
        self.admin_draining = False
        self.removed = False
        self.retiring = False  # draining, and removed once its last request ends
        self.discovered_from = discovered_from  # the dns://NAME:PORT it was found by, if any
        self.inflight = 0
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejection_count = 0
        self.ejections_total = 0
        self.backoff_until = 0.0
        self.active_since = -math.inf if warm else now  # slow start origin
        self.ewma = EWMA_INITIAL_S
        self.ewma_stamp = now
        self.typical = 0.0  # seconds; meaningful once ``typical_n`` answers were seen
        self.typical_n = 0
        self.requests = 0
        self.errors: dict[str, int] = {}
        self.latency = Histogram()
        self.pool: UpstreamPool | None = None

    # -- routing -------------------------------------------------------------------------------
    def routable(self, now: float) -> bool:
        """May get new requests in normal (non-panic) mode."""
        return (
            self.health in ROUTABLE
            and self.ejected_until <= now
            and not self.admin_draining
            and not self.removed
        )

    def willing(self) -> bool:
        """May get new requests in panic mode: only an explicit drain or start keeps it out."""
        return self.health in WILLING and not self.admin_draining and not self.removed

    def effective_weight(self, now: float) -> float:
        """Weight x slow-start ramp x overload factor (Envoy's slow-start formula)."""
        weight = float(self.weight)
        if self.health is Health.OVERLOADED:
            weight *= self.tuning.overloaded_weight
        return weight * self.slow_start_factor(now)

    def slow_start_factor(self, now: float) -> float:
        """1 outside the window; inside, from the floor up to 1 (a future start: the floor)."""
        window = self.tuning.slow_start_window
        age = now - self.active_since
        if window <= 0.0 or age >= window:
            return 1.0
        ramp = max(age, 0.0) / window
        if self.tuning.slow_start_aggression != 1.0:
            ramp **= 1.0 / self.tuning.slow_start_aggression
        return max(self.tuning.slow_start_min_weight, ramp)

    def ewma_cost(self, now: float) -> float:
        """Peak-EWMA latency, decayed towards zero while no answers come (as Finagle does)."""
        return self.ewma * math.exp(-(now - self.ewma_stamp) / EWMA_DECAY_S)

    # -- passive observations ------------------------------------------------------------------
    def observe_latency(self, seconds: float, now: float) -> None:
        """Records an answer's latency: histogram, peak-sensitive EWMA (Finagle's) and the
        typical latency."""
        self.latency.observe(seconds)
        n = self.typical_n = self.typical_n + 1
        gap = now - self.ewma_stamp  # since the previous answer
        if gap < 0.0:
            gap = 0.0
        weight = -_expm1(-gap / TYPICAL_TAU_S)
        if weight < TYPICAL_ALPHA:
            weight = TYPICAL_ALPHA
        if n * weight < 1.0:
            weight = 1.0 / n
        self.typical += (seconds - self.typical) * weight
        if seconds > self.ewma:
            self.ewma = seconds
        else:
            w = _exp(-gap / EWMA_DECAY_S)
            self.ewma = self.ewma * w + seconds * (1.0 - w)
        self.ewma_stamp = now

    def record_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def record_success(self) -> None:
        self.consecutive_failures = 0

    def record_failure(self) -> bool:
        """Counts a failure in a row; True when the outlier threshold is reached."""
        self.consecutive_failures += 1
        return self.consecutive_failures >= self.tuning.consecutive_failures

    def back_off(self, retry_after: float, now: float) -> None:
        """Honours a 503's Retry-After: no new requests while another backend can take them."""
        until = now + min(retry_after, self.tuning.retry_after_cap)
        self.backoff_until = max(self.backoff_until, until)

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def eject(self, now: float) -> float:
        """Ejects for base x (number of ejections), capped; returns the duration."""
        if now - self.ejected_until > self.tuning.max_ejection:
            self.ejection_count = 0  # long enough since the last one: start over
        self.ejection_count += 1
        self.ejections_total += 1
        duration = min(self.tuning.base_ejection * self.ejection_count, self.tuning.max_ejection)
        self.ejected_until = now + duration
        self.active_since = self.ejected_until  # slow start when it comes back
        self.consecutive_failures = 0
        return duration

    def uneject(self, now: float) -> None:
        if self.ejected_until > now:
            self.ejected_until = now
            self.active_since = now

    # -- active health checks ------------------------------------------------------------------
    def apply_probe(self, observed: Health, now: float) -> Health | None:
        """Folds one probe result in; returns the new state when it changed.

        ``observed`` is HEALTHY (200 ready), OVERLOADED/STARTING/DRAINING (503 with that status)
        or UNHEALTHY (anything else: refused, timeout, other status).
        """
        old = self.health
        if observed is Health.UNHEALTHY:
            self._successes, self._failures = 0, self._failures + 1
            first = old is Health.UNKNOWN or old is Health.PENDING
            if first or self._failures >= self.tuning.unhealthy_threshold:
                self.health = Health.UNHEALTHY
        else:
            self._successes, self._failures = self._successes + 1, 0
            recovering = old is Health.UNHEALTHY
            if not recovering or self._successes >= self.tuning.healthy_threshold:
                self.health = observed
            if observed is Health.HEALTHY:
                self.uneject(now)  # Envoy: a passing active check un-ejects
        if self.health is old:
            return None
        if old not in ROUTABLE and self.health in ROUTABLE:
            self.active_since = max(self.active_since, now)  # slow start from here
        return self.health

    # -- reporting -----------------------------------------------------------------------------
    def snapshot(self, now: float, wall_now: float) -> dict[str, Any]:
        """The backend as ``GET /lb/status`` shows it."""
        ejected = self.ejected(now)
        return {
            "id": self.id,
            "url": self.url,
            "server_name": self.server_name if self.tls else None,
            "weight": self.weight,
            "effective_weight": round(self.effective_weight(now), 4),
            "health": self.health.value,
            "state": self.state(now),
            "draining": self.admin_draining,
            "retiring": self.retiring,
            "discovered_from": self.discovered_from,
            "inflight": self.inflight,
            "ejected": ejected,
            "ejected_until": wall_now + (self.ejected_until - now) if ejected else None,
            "ejections": self.ejections_total,
            "backoff_until": wall_now + (self.backoff_until - now) if self.backoff_until > now else None,
            "slow_start": self.slow_start_factor(now) < 1.0,
            "ewma_ms": round(self.ewma_cost(now) * 1000.0, 3),
            "typical_ms": round(self.typical * 1000.0, 3) if self.typical_n else None,
            "totals": {"requests": self.requests, "errors": dict(self.errors)},
        }

    def state(self, now: float) -> str:
        """One word for people: why it does or does not get traffic."""
        if self.removed:
            return "removed"
        if self.admin_draining:
            return "draining"
        if self.ejected(now):
            return "ejected"
        if self.health not in ROUTABLE:
            return self.health.value
        if self.slow_start_factor(now) < 1.0:
            return "slow_start"
        return "active" if self.health is not Health.OVERLOADED else "overloaded"

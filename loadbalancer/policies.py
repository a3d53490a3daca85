"""Balancing policies: each a tiny class with one method, ``choose``, in a small registry.

``choose(candidates, weights, now)`` gets the backends that may take the request (never empty)
and their effective weights (weight x slow start x overload factor), and returns one of them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol, TypeVar

from loadbalancer.backend import Backend
from loadbalancer.errors import ConfigError

__all__ = [
    "POLICIES",
    "LeastRequest",
    "PeakEwma",
    "Policy",
    "RandomPolicy",
    "RoundRobin",
    "make_policy",
    "register",
]


class Policy(Protocol):
    name: ClassVar[str]

    def choose(self, candidates: Sequence[Backend], weights: Sequence[float], now: float) -> Backend:
        """One of ``candidates`` (non-empty); ``weights[i]`` is ``candidates[i]``'s."""
        ...


POLICIES: dict[str, type[Policy]] = {}
P = TypeVar("P", bound=type[Policy])


def register(cls: P) -> P:
    POLICIES[cls.name] = cls
    return cls


def make_policy(name: str, rng: random.Random | None = None) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ConfigError(f"unknown policy {name!r}; known: {known}") from None
    policy = cls()
    if rng is not None and isinstance(policy, _Sampling):
        policy.rng = rng
    return policy


class _Sampling:
    """Weighted random draws, shared by the policies that sample."""

    def __init__(self) -> None:
        self.rng = random.Random()

    def _draw(self, weights: Sequence[float], total: float, skip: int = -1) -> int:
        """Index drawn with probability proportional to weight, never ``skip``."""
        point = self.rng.random() * total
        last = -1
        for i, weight in enumerate(weights):
            if i == skip or weight <= 0.0:
                continue
            last = i
            point -= weight
            if point < 0.0:
                return i
        return last if last >= 0 else (0 if skip != 0 else 1)

    def _two(self, weights: Sequence[float]) -> tuple[int, int]:
        """Two distinct indices, each drawn proportionally to weight (power of two choices)."""
        total = sum(weights)
        first = self._draw(weights, total)
        return first, self._draw(weights, total - weights[first], skip=first)

    def _p2c(
        self,
        candidates: Sequence[Backend],
        weights: Sequence[float],
        cost: Callable[[Backend, float], float],
    ) -> Backend:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._two(weights)
        # Lower cost per unit of weight wins; on a tie the first (weighted) draw wins, so idle
        # backends split traffic by weight and loaded ones by how much they have in flight.
        if cost(candidates[b], weights[b]) < cost(candidates[a], weights[a]):
            return candidates[b]
        return candidates[a]


@register
class LeastRequest(_Sampling):
    """Weighted least request with power of two choices (Envoy's, in-flight per unit of weight).

    The first choice comes from smooth weighted round-robin, the second is a weighted random
    draw; the second wins when it would still have fewer in flight per unit of weight than the
    first *after* taking the request. Under load this is Envoy's least request (a slow backend
    piles up requests in flight and loses the comparison); when backends are equally fast the
    ratios are the weights exactly, even at low concurrency, where two random draws drift.
    """

    name: ClassVar[str] = "least_request"

    def __init__(self) -> None:
        super().__init__()
        self._order = RoundRobin()

    def choose(self, candidates: Sequence[Backend], weights: Sequence[float], now: float) -> Backend:
        first = self._order.pick(candidates, weights)
        if len(candidates) == 1:
            return candidates[first]
        second = self._draw(weights, sum(weights) - weights[first], skip=first)
        a, b = candidates[first], candidates[second]
        if (b.inflight + 1) * weights[first] <= a.inflight * weights[second]:
            return b
        return a


@register
class PeakEwma(_Sampling):
    """Finagle/Linkerd peak EWMA: power of two choices on latency x (in-flight + 1) / weight."""

    name: ClassVar[str] = "peak_ewma"

    def choose(self, candidates: Sequence[Backend], weights: Sequence[float], now: float) -> Backend:
        return self._p2c(
            candidates,
            weights,
            lambda b, w: b.ewma_cost(now) * (b.inflight + 1) / w if w > 0 else 1e18,
        )


@register
class RandomPolicy(_Sampling):
    """Weighted random."""

    name: ClassVar[str] = "random"

    def choose(self, candidates: Sequence[Backend], weights: Sequence[float], now: float) -> Backend:
        return candidates[self._draw(weights, sum(weights))]


@register
class RoundRobin:
    """nginx's smooth weighted round-robin: weights 5,1,1 give a a b a c a a."""

    name: ClassVar[str] = "round_robin"
    MAX_STATE = 4096

    def __init__(self) -> None:
        self._current: dict[str, float] = {}

    def choose(self, candidates: Sequence[Backend], weights: Sequence[float], now: float) -> Backend:
        return candidates[self.pick(candidates, weights)]

    def pick(self, candidates: Sequence[Backend], weights: Sequence[float]) -> int:
        """The index of the next candidate in the smooth weighted sequence."""
        current = self._current
        if len(current) > self.MAX_STATE:
            current.clear()  # backends come and go; keep the state bounded
        best, best_value, total = 0, -float("inf"), 0.0
        for i, (backend, weight) in enumerate(zip(candidates, weights, strict=True)):
            value = current.get(backend.id, 0.0) + weight
            current[backend.id] = value
            total += weight
            if value > best_value:
                best, best_value = i, value
        current[candidates[best].id] = best_value - total
        return best

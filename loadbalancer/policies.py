"""Balancing policies: each a tiny class with one method, ``choose``, in a small registry.

``choose(context)`` gets a :class:`ChoiceContext`: the backends that may take the request (never
empty), their effective weights (weight x slow start x overload factor), the time, and the
request's hash key, and returns one of the backends. Every policy is called the same way, so
callers never ask which kind they hold: the consistent-hash policies (``ring_hash``,
``maglev``; :mod:`loadbalancer.hashing`) place a request with a key by it, the others ignore it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, TypeVar

from loadbalancer.backend import Backend
from loadbalancer.errors import ConfigError
from loadbalancer.hashing import HashSpace, Maglev, Ring, key_hash
from loadbalancer.speed import SpeedFactors

__all__ = [
    "POLICIES",
    "ChoiceContext",
    "ConsistentHash",
    "LeastRequest",
    "MaglevHash",
    "PeakEwma",
    "Policy",
    "RandomPolicy",
    "RingHash",
    "RoundRobin",
    "make_policy",
    "register",
]


@dataclass(slots=True)
class ChoiceContext:
    """What one choice is made from (made per request and read only: not frozen, since a frozen
    dataclass costs four times as much to make).

    ``candidates`` may take the request (never empty) and ``weights[i]`` is ``candidates[i]``'s;
    ``now`` is ``time.monotonic()``; ``key`` is what a consistent hash places the request by
    (a stream id, a header's value), None when it has none. ``members`` (id -> backend) is the
    whole cluster, routable or not, which a consistent hash spreads keys over so that a backend
    passed over for a while gets its keys back; ``version`` is the cluster's count of changes,
    so the hash space is compared with ``members`` only when it moved.
    """

    candidates: Sequence[Backend]
    weights: Sequence[float]
    now: float
    key: bytes | None = None
    members: Mapping[str, Backend] = field(default_factory=dict)
    version: int | None = None


class Policy(Protocol):
    name: ClassVar[str]
    uses_key: ClassVar[bool]  # whether ``key`` matters (else callers need not work it out)

    def choose(self, context: ChoiceContext) -> Backend:
        """One of ``context.candidates``."""
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

    uses_key: ClassVar[bool] = False

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
    A backend markedly slower than the fastest has its weight scaled down (:mod:`loadbalancer.speed`).
    """

    name: ClassVar[str] = "least_request"

    def __init__(self) -> None:
        super().__init__()
        self._order = RoundRobin()
        self.speed = SpeedFactors()

    def choose(self, context: ChoiceContext) -> Backend:
        candidates = context.candidates
        weights = self.speed.adjust(candidates, context.weights, context.now)
        first = self._order.next_index(candidates, weights)
        count = len(candidates)
        if count == 1:
            return candidates[first]
        # of two, the second choice is the other one: no draw needed
        second = 1 - first if count == 2 else self._draw(weights, sum(weights) - weights[first], skip=first)
        a, b = candidates[first], candidates[second]
        if (b.inflight + 1) * weights[first] <= a.inflight * weights[second]:
            return b
        return a


@register
class PeakEwma(_Sampling):
    """Finagle/Linkerd peak EWMA: power of two choices on latency x (in-flight + 1) / weight, the
    weight of a markedly slower backend scaled down as in ``least_request``."""

    name: ClassVar[str] = "peak_ewma"

    def __init__(self) -> None:
        super().__init__()
        self.speed = SpeedFactors()

    def choose(self, context: ChoiceContext) -> Backend:
        candidates, now = context.candidates, context.now
        weights = self.speed.adjust(candidates, context.weights, now)
        return self._p2c(
            candidates,
            weights,
            lambda b, w: b.ewma_cost(now) * (b.inflight + 1) / w if w > 0 else 1e18,
        )


@register
class RandomPolicy(_Sampling):
    """Weighted random."""

    name: ClassVar[str] = "random"

    def choose(self, context: ChoiceContext) -> Backend:
        weights = context.weights
        return context.candidates[self._draw(weights, sum(weights))]


@register
class RoundRobin:
    """nginx's smooth weighted round-robin: weights 5,1,1 give a a b a c a a.

    The running values of the candidates last asked about are kept in a list beside them, so
    that the usual call (the cluster's routing, unchanged since the last request) costs a loop
    over floats; a different list of candidates carries each backend's value over by its id.
    """

    name: ClassVar[str] = "round_robin"
    uses_key: ClassVar[bool] = False
    MAX_STATE = 4096

    def __init__(self) -> None:
        self._saved: dict[str, float] = {}  # values of backends seen before, by id
        self._candidates: Sequence[Backend] = ()
        self._weights: Sequence[float] = ()
        self._values: list[float] = []  # the running value of each of ``_candidates``
        self._total = 0.0

    def choose(self, context: ChoiceContext) -> Backend:
        return context.candidates[self.next_index(context.candidates, context.weights)]

    def next_index(self, candidates: Sequence[Backend], weights: Sequence[float]) -> int:
        """The index of the next candidate in the smooth weighted sequence."""
        values = self._values
        if candidates is not self._candidates or weights is not self._weights or len(values) != len(weights):
            values = self._switch(candidates, weights)
        best, best_value = 0, _NO_VALUE
        for i, weight in enumerate(weights):
            value = values[i] = values[i] + weight
            if value > best_value:
                best, best_value = i, value
        values[best] = best_value - self._total
        return best

    def _switch(self, candidates: Sequence[Backend], weights: Sequence[float]) -> list[float]:
        if len(candidates) != len(weights):
            raise ValueError("one weight per candidate")
        saved = self._saved
        for backend, value in zip(self._candidates, self._values, strict=True):
            saved[backend.id] = value
        if len(saved) > self.MAX_STATE:
            saved.clear()  # backends come and go; keep the state bounded
        self._candidates, self._weights, self._total = candidates, weights, sum(weights)
        self._values = [saved.get(b.id, 0.0) for b in candidates]
        return self._values


_NO_VALUE = -float("inf")


class ConsistentHash(LeastRequest):
    """A request with a key (a stream id, a header's value) goes to the key's owner in a hash
    space over the cluster's backends and their configured weights (slow start and the overload
    factor do not move keys); one without a key is balanced as ``least_request``.

    The space is rebuilt only when the backends or their weights change. An owner that may not
    take the request (not among the candidates: unhealthy, ejected, draining, backing off, or
    already tried by this request) is passed over for the next one in the key's order, without
    a rebuild: only its keys move, and they come back when it does.
    """

    uses_key: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.space: HashSpace = self._build(())
        self.rebuilds = 0
        self._hosts: list[Backend] = []  # space.ids[i]'s backend
        self._weights: dict[str, int] = {}
        self._version: int | None = None
        self._allowed: Sequence[Backend] | None = None
        self._allowed_set: frozenset[Backend] = frozenset()

    def _build(self, hosts: Iterable[tuple[str, int]]) -> HashSpace:
        raise NotImplementedError

    def sync(self, members: Mapping[str, Backend], version: int | None = None) -> bool:
        """Follows ``members`` (id -> backend: the hash space); rebuilds when an id or a weight
        changed, and returns whether it did. ``version`` (the cluster's) skips the comparison
        while it is the same as last time."""
        if version is not None and version == self._version:
            return False
        self._version = version
        weights = {backend_id: b.weight for backend_id, b in members.items()}
        rebuilt = weights != self._weights
        if rebuilt:
            self.space = self._build(weights.items())
            self._weights = weights
            self.rebuilds += 1
        self._hosts = [members[backend_id] for backend_id in self.space.ids]
        return rebuilt

    def choose(self, context: ChoiceContext) -> Backend:
        """The first candidate in the key's order; balanced as ``least_request`` without a key."""
        if context.key is None:
            return super().choose(context)
        self.sync(context.members, context.version)
        candidates = context.candidates
        if candidates is not self._allowed:  # the cluster's routing snapshot comes back as is
            self._allowed, self._allowed_set = candidates, frozenset(candidates)
        ok, owners, hosts = self._allowed_set, self.space.owners, self._hosts
        size = len(owners)
        if not size:
            return candidates[0]
        hashed = key_hash(context.key)
        position = self.space.start(hashed)
        host = hosts[owners[position]]
        if host in ok:
            return host  # the owner: O(1) for Maglev, a binary search on the ring
        step = self.space.step(hashed)
        for _ in range(size - 1):
            position = (position + step) % size
            host = hosts[owners[position]]
            if host in ok:
                return host
        return candidates[0]  # none of them is in the space


@register
class RingHash(ConsistentHash):
    """Envoy's ring hash: ``weight x 1024`` points per backend on a 64-bit ring."""

    name: ClassVar[str] = "ring_hash"

    def _build(self, hosts: Iterable[tuple[str, int]]) -> HashSpace:
        return Ring(hosts)


@register
class MaglevHash(ConsistentHash):
    """Envoy's Maglev: a 65537-entry table, O(1) lookup, an even spread of keys."""

    name: ClassVar[str] = "maglev"

    def _build(self, hosts: Iterable[tuple[str, int]]) -> HashSpace:
        return Maglev(hosts)

"""Consistent hashing for the ``ring_hash`` and ``maglev`` policies, and the key they hash.

Both are Envoy's designs, built over ``(id, weight)`` pairs (sorted by id first, so the order
the backends were added in does not matter) and rebuilt only when that set changes:

* :class:`Ring` (Karger et al., ketama; Envoy's ``ring_hash_lb.cc``): a host of weight ``w``
  owns ``w x replicas`` points on a 64-bit ring, the first 8-byte words of SHAKE-256 of its id
  (a prefix of the same stream for any count, so a weight change only adds or removes that
  host's own points). A key belongs to the first point at or after its hash, clockwise; lookup
  is a binary search, O(log points).
* :class:`Maglev` (Eisenbud et al., NSDI 2016; Envoy's ``maglev_lb.cc``): a lookup table of
  prime size M filled by each host's permutation ``(offset + j x skip) mod M`` (offset and skip
  from two 64-bit halves of BLAKE2b of its id), hosts taking turns in proportion to their
  weight (Envoy's ``target_weight``); lookup is ``table[hash mod M]``, O(1).

Both expose ``owners`` (position -> host index), ``start(hash)`` and ``step(hash)``; the caller
walks the positions ``start, start + step, ...`` (clockwise on the ring; for Maglev a stride
drawn from the key's hash, so that the slots tried next are spread over the table like the keys
are; the size being prime, the walk meets every slot) until it meets a host that may take the
request. A host that is unhealthy, ejected, draining or already tried is skipped that way
without a rebuild: only the keys it owns move, spread over the others in proportion to their
shares, and they come back to it when it is routable again.
"""

from __future__ import annotations

import hashlib
import re
import struct
from bisect import bisect_left
from collections.abc import Iterable, Sequence

__all__ = [
    "MAGLEV_TABLE_SIZE",
    "RING_MAX_POINTS",
    "RING_REPLICAS",
    "HashSpace",
    "Maglev",
    "Ring",
    "key_hash",
    "request_key",
    "stream_id",
    "walk",
]

RING_REPLICAS = 1024  # points per unit of weight (Envoy: minimum_ring_size 1024 over all hosts)
RING_MAX_POINTS = 1 << 16  # above this many in all, every host's count is scaled down
MAGLEV_TABLE_SIZE = 65537  # Envoy's default; a prime (the permutations need it)
STREAMS_PREFIX = b"/v1/streams/"
_STREAM_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


def key_hash(key: bytes) -> int:
    """A request key's 64-bit hash (BLAKE2b, 8 bytes, big-endian)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")


def stream_id(target: bytes) -> bytes | None:
    """The stream id of ``/v1/streams/{id}`` or ``/v1/streams/{id}/...`` (1-128 characters of
    ``[A-Za-z0-9._-]``), query ignored; None for any other target."""
    if not target.startswith(b"/"):  # absolute form: http://authority/path
        scheme = target.find(b"://")
        slash = target.find(b"/", scheme + 3) if scheme > 0 else -1
        if slash < 0:
            return None
        target = target[slash:]
    if not target.startswith(STREAMS_PREFIX):
        return None
    rest = target[len(STREAMS_PREFIX) :]
    for end in (b"?", b"#", b"/"):
        rest = rest.partition(end)[0]
    return rest if _STREAM_ID.fullmatch(rest) else None


def request_key(target: bytes, headers: Iterable[tuple[bytes, bytes]], header: bytes) -> bytes | None:
    """What a request is hashed by: its stream id, else the value of ``header`` (lower case),
    else None (the policy then balances as ``least_request``)."""
    key = stream_id(target)
    if key is not None:
        return key
    for name, value in headers:
        if len(name) == len(header) and name.lower() == header:
            value = value.strip()
            return value or None
    return None


class HashSpace:
    """What :class:`Ring` and :class:`Maglev` share: the hosts (sorted ids) and the owner of
    each position."""

    ids: tuple[str, ...]
    owners: list[int]

    def start(self, hash_: int) -> int:
        """The first position to look at for a key hashed to ``hash_``."""
        raise NotImplementedError

    def step(self, hash_: int) -> int:
        """How far the next position is from the current one (modulo ``len(owners)``)."""
        return 1

    def owner(self, hash_: int) -> str:
        """The id of the host owning ``hash_`` when every host may take it."""
        return self.ids[self.owners[self.start(hash_)]]


def _sorted(hosts: Iterable[tuple[str, int]]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    pairs = sorted(dict(hosts).items())
    if any(weight < 1 for _, weight in pairs):
        raise ValueError("weights must be positive integers")
    return tuple(h for h, _ in pairs), tuple(w for _, w in pairs)


class Ring(HashSpace):
    """Envoy's ring hash (see the module's docstring)."""

    def __init__(
        self,
        hosts: Iterable[tuple[str, int]],
        *,
        replicas: int = RING_REPLICAS,
        max_points: int = RING_MAX_POINTS,
    ) -> None:
        self.ids, weights = _sorted(hosts)
        # Each host's count depends on its own weight only (so removing or adding one moves no
        # other host's keys) until the ring would exceed max_points; then all are scaled down.
        scale = min(float(replicas), max_points / max(sum(weights), 1))
        entries: list[int] = []
        shift = max(len(self.ids) - 1, 1).bit_length()
        for index, (host, weight) in enumerate(zip(self.ids, weights, strict=True)):
            count = max(1, round(weight * scale))
            words = struct.unpack(f">{count}Q", hashlib.shake_256(host.encode()).digest(8 * count))
            entries += [(point << shift) | index for point in words]
        entries.sort()  # ties between hosts (never seen in 64 bits) go to the smaller id
        mask = (1 << shift) - 1
        self.points = [entry >> shift for entry in entries]
        self.owners = [entry & mask for entry in entries]

    def start(self, hash_: int) -> int:
        i = bisect_left(self.points, hash_)
        return i if i < len(self.points) else 0

    def counts(self) -> list[int]:
        """Points per host, in ``ids`` order."""
        counts = [0] * len(self.ids)
        for owner in self.owners:
            counts[owner] += 1
        return counts


class Maglev(HashSpace):
    """Envoy's Maglev (see the module's docstring)."""

    def __init__(self, hosts: Iterable[tuple[str, int]], *, size: int = MAGLEV_TABLE_SIZE) -> None:
        if not _is_prime(size):
            raise ValueError(f"the Maglev table size must be a prime, got {size}")
        self.ids, weights = _sorted(hosts)
        self.size = size
        self.owners = table = [-1] * size if self.ids else []
        if not self.ids:
            return
        slots, skips = [], []  # each host's next preference: (offset + j x skip) mod size
        for host in self.ids:
            first, second = struct.unpack(">QQ", hashlib.blake2b(host.encode(), digest_size=16).digest())
            slots.append(first % size)
            skips.append(second % (size - 1) + 1)
        targets = [0] * len(self.ids)
        heaviest = max(weights)
        filled, turn = 0, 0
        while filled < size:
            turn += 1
            for i, weight in enumerate(weights):
                # A host of the heaviest weight takes every turn, one of a third of it every
                # third turn (Envoy's target_weight).
                if turn * weight < targets[i]:
                    continue
                targets[i] += heaviest
                slot, skip = slots[i], skips[i]
                while table[slot] >= 0:
                    slot += skip
                    if slot >= size:
                        slot -= size
                table[slot] = i
                slot += skip
                slots[i] = slot - size if slot >= size else slot
                filled += 1
                if filled == size:
                    break

    def start(self, hash_: int) -> int:
        return hash_ % self.size

    def step(self, hash_: int) -> int:
        return (hash_ // self.size) % (self.size - 1) + 1

    def counts(self) -> list[int]:
        """Table entries per host, in ``ids`` order."""
        counts = [0] * len(self.ids)
        for owner in self.owners:
            counts[owner] += 1
        return counts


def walk(space: HashSpace, hash_: int) -> Sequence[int]:
    """Every host index in the order a key hashed to ``hash_`` tries them (each once): for
    tests and tools; the policies stop at the first that may take the request."""
    owners, seen, order = space.owners, set[int](), []
    n = len(owners)
    start, step = (space.start(hash_), space.step(hash_)) if owners else (0, 1)
    for k in range(n):
        owner = owners[(start + k * step) % n]
        if owner not in seen:
            seen.add(owner)
            order.append(owner)
            if len(order) == len(space.ids):
                break
    return order


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True

"""Speed factors: the load-aware policies (``least_request``, ``peak_ewma``) scale a backend's
weight down when it answers markedly slower than the fastest candidate.

Balancing requests in flight alone gives each backend a share proportional to 1 / latency
(Little's law), so a host twice as slow still gets half a fast one's requests: too many when the
slowness is a bad link or a sick machine rather than work. A backend whose typical latency
(:attr:`Backend.typical`) is beyond an edge, ``BAND`` times the fastest candidate's and at least
``MIN_GAP_S`` more, gets its weight multiplied by ``(edge / its own) ** POWER``: continuous at the
edge, so a host near it does not flip between two weights, and never below ``FLOOR``, so that it
keeps getting answers to be measured by. That is 0.64 at 1.4 times slower, 0.23 at 1.8, 0.05
from 2.6 on. Together with balancing in flight per unit of weight, a host 1.8 times slower (a
+100 ms link in front of a service answering in 120 ms) gets about a fifth of its fair share.
Backends within the edge keep their weights exactly: equally fast hosts jitter, and configured
weights must hold.
"""

from __future__ import annotations

from collections.abc import Sequence

from loadbalancer.backend import Backend

__all__ = ["BAND", "FLOOR", "MIN_ANSWERS", "MIN_GAP_S", "POWER", "SpeedFactors", "speed_factor"]

BAND = 1.25  # slower than this x the fastest candidate's typical latency: weight scaled down
POWER = 4.0
MIN_GAP_S = 0.005  # ... and slower by more than this: sub-millisecond answers are mostly noise
FLOOR = 0.05
MIN_ANSWERS = 16  # a backend's typical latency counts once it has this many answers
REFRESH_S = 0.1  # the factors are recomputed at most this often


class SpeedFactors:
    """Per-policy cache of the factors; :meth:`adjust` is called on every choice."""

    __slots__ = ("_count", "_due", "_factors")

    def __init__(self) -> None:
        self._due = -1.0
        self._factors: dict[str, float] = {}
        self._count = 0

    def adjust(self, candidates: Sequence[Backend], weights: Sequence[float], now: float) -> Sequence[float]:
        """``weights`` scaled by the candidates' speed factors (the same list when none is slow)."""
        if now >= self._due or len(candidates) != self._count:
            self._refresh(candidates, now)
        factors = self._factors
        if not factors:
            return weights
        return [w * factors.get(b.id, 1.0) for b, w in zip(candidates, weights, strict=True)]

    def factor(self, backend: Backend) -> float:
        """The factor last computed for ``backend`` (1 when it is not slow)."""
        return self._factors.get(backend.id, 1.0)

    def _refresh(self, candidates: Sequence[Backend], now: float) -> None:
        self._due = now + REFRESH_S
        self._count = len(candidates)
        measured = [b for b in candidates if b.typical_n >= MIN_ANSWERS and b.typical > 0.0]
        self._factors = {}
        if len(measured) < 2:
            return
        fastest = min(b.typical for b in measured)
        edge = max(BAND * fastest, fastest + MIN_GAP_S)
        for b in measured:
            if b.typical > edge:
                self._factors[b.id] = max(FLOOR, (edge / b.typical) ** POWER)


def speed_factor(policy: object, backend: Backend) -> float | None:
    """``backend``'s speed factor under ``policy``; None for a policy that does not follow speed."""
    speed = getattr(policy, "speed", None)
    return speed.factor(backend) if isinstance(speed, SpeedFactors) else None

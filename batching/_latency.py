"""A latency target: the batch size and the passes in flight that keep an item's predicted time in
the batcher (its queue wait plus its batch's pass) under the target, from a cost model it keeps.

The cost model holds, for each batch size and number of passes running at once, a moving average
of a pass's seconds. A size or concurrency never seen is predicted from the nearest one seen: by
size, in proportion to the items; by concurrency, as if passes did not slow each other. Both are
guesses the batcher then tries, measures and corrects (a service's warm-up measures every size).

The plan, made again after every batch: no cap while the largest batches on every slot fit;
else, of every (size, passes) whose predicted pass fits in half the target (an item that arrives
just as a pass starts waits for it, then runs its own), the one with the most items per second;
when none fits, no cap (the target cannot be met by capping, and throughput is then what drains
the queue). At dispatch, a batch is made smaller still when the oldest item has already waited so
long that a full one would take it past the target.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CostModel", "LatencyPlan", "LatencyPlanner"]

_SMOOTHING = 0.2


class CostModel:
    """Seconds of one pass by (batch size, passes running at once), a moving average of each."""

    def __init__(self) -> None:
        self._cost: dict[tuple[int, int], float] = {}

    def record(self, size: int, concurrent: int, seconds: float) -> None:
        if size < 1 or seconds <= 0:
            return
        key = (size, max(1, concurrent))
        old = self._cost.get(key)
        self._cost[key] = seconds if old is None else old + _SMOOTHING * (seconds - old)

    @property
    def empty(self) -> bool:
        return not self._cost

    def predict(self, size: int, concurrent: int) -> float | None:
        """The predicted seconds of a pass of ``size`` items with ``concurrent`` running, or None
        before any pass was measured."""
        exact = self._cost.get((size, concurrent))
        if exact is not None:
            return exact
        levels = {k for _, k in self._cost}
        if not levels:
            return None
        # the nearest concurrency measured (the same if it was), then the nearest size in it
        k = min(levels, key=lambda c: (abs(c - concurrent), c))
        near = min((b for b, c in self._cost if c == k), key=lambda b: (abs(b - size), b))
        return self._cost[(near, k)] * size / near  # in proportion to the items


@dataclass(frozen=True)
class LatencyPlan:
    max_batch_size: int
    max_inflight: int


class LatencyPlanner:
    """The caps that keep an item's predicted time under ``target`` seconds."""

    def __init__(self, target: float, max_batch_size: int, slots: int) -> None:
        if not target > 0:
            raise ValueError(f"latency_target must be a positive number of seconds, not {target}")
        self.target = target
        self.model = CostModel()
        self._max = max_batch_size
        self._slots = slots
        self.plan = LatencyPlan(max_batch_size, slots)

    def record(self, size: int, concurrent: int, seconds: float, max_batch_size: int) -> LatencyPlan:
        """A pass of ``size`` items took ``seconds`` with ``concurrent`` running; the plan anew."""
        self.model.record(size, concurrent, seconds)
        self._max = max_batch_size
        self.plan = self._best()
        return self.plan

    def _best(self) -> LatencyPlan:
        uncapped = self.model.predict(self._max, self._slots)
        if uncapped is None or 2 * uncapped <= self.target:
            return LatencyPlan(self._max, self._slots)  # nothing to trade
        best: tuple[float, int, int] | None = None
        for k in range(1, self._slots + 1):
            for b in range(1, self._max + 1):
                cost = self.model.predict(b, k)
                if cost is None:
                    return LatencyPlan(self._max, self._slots)
                if 2 * cost > self.target:
                    break  # larger batches only take longer
                rate = k * b / cost
                if best is None or rate > best[0]:
                    best = (rate, b, k)
        if best is None:
            return LatencyPlan(self._max, self._slots)
        return LatencyPlan(best[1], best[2])

    def batch_size(self, waited: float, concurrent: int) -> int:
        """The batch to send now, the oldest item having ``waited`` seconds: the plan's size,
        smaller if that would take the oldest item past the target while a smaller one would not."""
        size = self.plan.max_batch_size
        first = self.model.predict(1, concurrent)
        if first is None or waited + first > self.target:
            return size  # late already: the largest batch drains the queue fastest
        while size > 1:
            cost = self.model.predict(size, concurrent)
            if cost is None or waited + cost <= self.target:
                break
            size -= 1
        return size

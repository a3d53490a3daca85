"""How long backends take to start an answer, recently: the base of the adaptive per-try timeout.

A try that has waited several times longer than almost every recent answer took is most likely
stuck on a host that went silent (a cut link, a frozen process): giving up on it then and sending
the request elsewhere answers within the caller's deadline, where a fixed per-try timeout as long
as that deadline never would (Envoy's per-try timeout and hedging address the same case).
"""

from __future__ import annotations

from array import array
from heapq import nlargest

__all__ = ["HeadLatency"]


class HeadLatency:
    """A high quantile of the last ``window`` answer-head latencies, recomputed every
    ``every`` samples and once ``min_samples`` have come (the few largest of a few hundred
    floats: a few microseconds, so well under one per answer at that rate)."""

    def __init__(self, window: int = 512, quantile: float = 0.99, every: int = 128,
                 min_samples: int = 32) -> None:
        self._samples = array("d", [0.0] * window)
        self._next = 0
        self._count = 0
        self._quantile = quantile
        self._every = every
        self._min_samples = min_samples
        self.value: float | None = None  # None until min_samples answers were seen

    def record(self, seconds: float) -> None:
        samples = self._samples
        samples[self._next] = seconds
        self._next = (self._next + 1) % len(samples)
        count = self._count = self._count + 1
        if count >= self._min_samples and (count % self._every == 0 or count == self._min_samples):
            n = min(count, len(samples))
            # the quantile is the k-th largest: no need to sort the rest
            k = n - min(n - 1, int(self._quantile * n))
            self.value = nlargest(k, samples if n == len(samples) else samples[:n])[-1]

"""How long backends take to start an answer, recently: the base of the adaptive per-try timeout.

A try that has waited several times longer than almost every recent answer took is most likely
stuck on a host that went silent (a cut link, a frozen process): giving up on it then and sending
the request elsewhere answers within the caller's deadline, where a fixed per-try timeout as long
as that deadline never would (Envoy's per-try timeout and hedging address the same case).
"""

from __future__ import annotations

from array import array

__all__ = ["HeadLatency"]


class HeadLatency:
    """A high quantile of the last ``window`` answer-head latencies, recomputed every
    ``every`` samples (a sort of a few hundred floats: cheap at that rate)."""

    def __init__(self, window: int = 512, quantile: float = 0.99, every: int = 32,
                 min_samples: int = 32) -> None:
        self._samples = array("d", [0.0] * window)
        self._next = 0
        self._count = 0
        self._quantile = quantile
        self._every = every
        self._min_samples = min_samples
        self.value: float | None = None  # None until min_samples answers were seen

    def record(self, seconds: float) -> None:
        self._samples[self._next] = seconds
        self._next = (self._next + 1) % len(self._samples)
        self._count += 1
        if self._count >= self._min_samples and self._count % self._every == 0:
            filled = sorted(self._samples[: min(self._count, len(self._samples))])
            self.value = filled[min(len(filled) - 1, int(self._quantile * len(filled)))]

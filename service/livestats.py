"""What the demo page's live panel shows, over the last ``span`` seconds of this process: images/s,
batch sizes, request latency percentiles and refusals. Prometheus keeps the cumulative figures;
these are the recent ones, kept in bounded deques.

Batches are recorded from the batcher's worker threads and requests from the event loop; a lock
guards the deques (held for an append or a copy).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

__all__ = ["LiveStats"]

_MAX_EVENTS = 20_000


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class LiveStats:
    def __init__(self, span: float = 30.0) -> None:
        self.span = span
        self._batches: deque[tuple[float, int]] = deque(maxlen=_MAX_EVENTS)
        self._latencies: deque[tuple[float, float]] = deque(maxlen=_MAX_EVENTS)
        self._refusals: deque[tuple[float, str]] = deque(maxlen=_MAX_EVENTS)
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def on_batch(self, size: int) -> None:
        with self._lock:
            self._batches.append((time.monotonic(), size))

    def on_request(self, total_ms: float) -> None:
        with self._lock:
            self._latencies.append((time.monotonic(), total_ms))

    def on_refused(self, reason: str, count: int) -> None:
        with self._lock:
            now = time.monotonic()
            self._refusals.extend((now, reason) for _ in range(min(count, 1000)))

    def snapshot(self, queue_depth: int, inflight_batches: int) -> dict[str, Any]:
        now = time.monotonic()
        since = now - self.span
        with self._lock:
            batches = [size for t, size in self._batches if t >= since]
            latencies = sorted(ms for t, ms in self._latencies if t >= since)
            refusals = Counter(reason for t, reason in self._refusals if t >= since)
        seconds = max(1e-3, min(self.span, now - self._started))
        histogram = Counter(batches)
        return {
            "span_s": self.span,
            "images_per_s": round(sum(batches) / seconds, 3),
            "batches_per_s": round(len(batches) / seconds, 3),
            "batch_sizes": {str(k): histogram[k] for k in sorted(histogram)},
            "queue_depth": queue_depth,
            "inflight_batches": inflight_batches,
            "requests": len(latencies),
            "latency_ms": {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)},
            "refusals": dict(refusals),
            "refusals_total": sum(refusals.values()),
        }

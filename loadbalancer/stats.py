"""Cheap counters for the hot path; Prometheus reads them only when scraped (see metrics.py)."""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["LATENCY_BUCKETS", "Histogram", "ProxyStats"]

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Histogram:
    """Fixed buckets, no lock: one event loop writes, the scrape reads on the same loop."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs as Prometheus wants them, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class ProxyStats:
    """Totals of the proxy as a whole (per-backend totals live on each Backend)."""

    __slots__ = (
        "active",
        "budget_exhausted",
        "client_connections",
        "duration",
        "responses",
        "retries",
        "websocket_bytes_in",
        "websocket_bytes_out",
        "websockets",
        "websockets_active",
    )

    def __init__(self) -> None:
        self.active = 0  # requests being proxied now
        self.client_connections = 0
        self.responses: dict[int, int] = {}  # by status code (bounded: 100-599)
        self.retries: dict[str, int] = {}  # by reason (bounded: UpstreamError kinds)
        self.budget_exhausted = 0
        self.duration = Histogram()
        self.websockets_active = 0  # tunnels handshaking or open
        self.websockets: dict[str, int] = {}  # by outcome (bounded: opened, rejected, ...)
        self.websocket_bytes_in = 0  # client to backend, once joined
        self.websocket_bytes_out = 0  # backend to client, once joined

    def count_response(self, status: int, seconds: float) -> None:
        self.responses[status] = self.responses.get(status, 0) + 1
        self.duration.observe(seconds)

    def count_retry(self, reason: str) -> None:
        self.retries[reason] = self.retries.get(reason, 0) + 1

    def count_websocket(self, outcome: str) -> None:
        self.websockets[outcome] = self.websockets.get(outcome, 0) + 1

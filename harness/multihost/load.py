"""The load and what is measured of it: closed-loop callers with the project's client
(``Load``), a background reader of the balancer's status (``Monitor``), and the figures of a
scenario (``Outcome``, from one or more measurement ``Window``s)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx

from clients import AsyncDetectionClient
from harness.multihost.procs import HOSTS, NsBalancer
from harness.stats import percentile

__all__ = ["CALLERS", "Call", "Load", "Monitor", "Outcome", "Window", "host_of", "outcome", "requests"]

CALLERS = 6  # closed-loop callers
MONITOR_EVERY = 0.25  # seconds between two reads of the balancer's status
_REQUEST_ID = re.compile(r"request [0-9a-f]{8,}")  # errors are counted by kind, not by request


@dataclass(frozen=True)
class Call:
    """One call of ``client.detect``: when it started and ended (``time.monotonic()``), and
    its error (``"Type: message"``) if it failed."""

    start: float
    end: float
    error: str | None


class Load:
    """``callers`` callers, each calling ``detect`` again as soon as its last call returned,
    through one ``AsyncDetectionClient(url)`` at its defaults (10 s deadline, 4 tries); every
    call is kept in ``calls``. Leaving the block lets the calls in flight finish."""

    def __init__(self, url: str, images: Sequence[bytes], callers: int = CALLERS) -> None:
        self.url, self.images, self.callers = url, images, callers
        self.calls: list[Call] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._client: AsyncDetectionClient | None = None

    async def __aenter__(self) -> Self:
        self._client = AsyncDetectionClient(self.url)
        self._tasks = [asyncio.create_task(self._caller(i)) for i in range(self.callers)]
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._stop.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            if self._client is not None:
                await self._client.aclose()

    async def _caller(self, index: int) -> None:
        assert self._client is not None
        n = index
        while not self._stop.is_set():
            image = self.images[n % len(self.images)]
            start = time.monotonic()
            error = None
            try:
                await self._client.detect(image, image_name=f"multihost_{n}.jpg")
            except Exception as exc:  # every failed call counts, whatever raised
                error = f"{type(exc).__name__}: {exc}"
            self.calls.append(Call(start, time.monotonic(), error))
            n += self.callers


class Monitor:
    """Reads the balancer's ``GET /lb/status`` every ``MONITOR_EVERY`` s in the background: a
    timeline of every backend's health, state, in-flight and request count."""

    def __init__(self, balancer: NsBalancer) -> None:
        self.balancer = balancer
        self.samples: list[tuple[float, dict[str, dict[str, Any]]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                self.samples.append((time.monotonic(), await self.balancer.backends()))
            await asyncio.sleep(MONITOR_EVERY)  # a sampling interval

    def first(self, backend_id: str, after: float,
              test: Callable[[dict[str, Any]], bool]) -> tuple[float, dict[str, Any]] | None:
        """The first sample at or after ``after`` in which ``test`` holds for the backend: when,
        and the backend as it was then."""
        for at, backends in self.samples:
            if at >= after and backend_id in backends and test(backends[backend_id]):
                return at, backends[backend_id]
        return None


# -- outcomes ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one scenario did: counts, latency, requests per host, and when things happened
    (``events``: seconds from the start of the load)."""

    scenario: str
    policy: str
    seconds: float
    calls: int
    failed: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    per_host: dict[str, int]
    events: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        errs = f" errors={self.errors}" if self.errors else ""
        events = " ".join(f"{k}@{v:.1f}s" for k, v in self.events.items())
        return (f"{self.scenario} [{self.policy}]: {self.calls} calls in {self.seconds:.0f}s, "
                f"{self.failed} failed, p50 {self.p50_ms:.0f} ms p99 {self.p99_ms:.0f} ms max "
                f"{self.max_ms:.0f} ms; per host {self.per_host}{errs}; {events}; {self.notes}")


def host_of(backend_id: str) -> str:
    address = backend_id.split(":")[0]
    return next((h.name for h in HOSTS if h.address == address), backend_id)


def requests(backends: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {bid: int(b["totals"]["requests"]) for bid, b in backends.items()}


@dataclass
class Window:
    """What one measurement window saw: the calls that started in it, its length, and the
    requests the balancer sent each host meanwhile (two reads of its totals, differenced)."""

    calls: list[Call]
    seconds: float
    per_host: Counter[str]

    @classmethod
    def of(cls, calls: Sequence[Call], since: float, until: float, before: dict[str, int],
           after: dict[str, int]) -> Window:
        per_host = Counter({host_of(bid): n - before.get(bid, 0) for bid, n in after.items()})
        return cls([c for c in calls if since <= c.start < until], until - since, per_host)


def outcome(scenario: str, policy: str, windows: Sequence[Window]) -> Outcome:
    """The figures of one or more windows taken together."""
    calls = [c for w in windows for c in w.calls]
    per_host: Counter[str] = sum((w.per_host for w in windows), Counter())
    ok = [(c.end - c.start) * 1000 for c in calls if c.error is None]
    errors = Counter(_REQUEST_ID.sub("request …", c.error)[:300] for c in calls if c.error is not None)
    return Outcome(scenario, policy, sum(w.seconds for w in windows), len(calls),
                   sum(errors.values()), dict(errors), percentile(ok, 50), percentile(ok, 99),
                   max(ok, default=float("nan")), dict(sorted(per_host.items())))

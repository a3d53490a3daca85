"""A low-overhead HTTP load generator for ``POST /v1/detect`` (asyncio + one pooled aiohttp session).

Two modes:

* **closed loop** — ``concurrency`` clients, each sends its next request as soon as the previous
  answer arrives. Latency is measured from the send. This finds the saturation throughput.
* **open loop** — requests arrive as a Poisson process at ``rate`` per second, on a schedule fixed
  in advance, whatever the server does. Latency is measured from the *scheduled* send time, so a
  server (or a generator) that falls behind shows up in the percentiles instead of hiding
  (no coordinated omission).

Every request is a multipart body with field ``image``: one of ``images`` distinct 640x480 JPEGs
made from ``service.demo.synthetic.make_sample(7, i)``, pre-encoded once so that sending costs
almost nothing (``harness.images``). Every answer must be 200 with a JSON body that names
``detections``; anything else is counted by status (or exception name) in ``errors``. The
generator reports its own CPU use (``getrusage``, percent of one core) and, in open loop, how late
it fired against the schedule, so a saturated generator is visible rather than silently lowering
the load.

    python -m bench.loadgen --url http://127.0.0.1:8000 --concurrency 16 --seconds 10
    python -m bench.loadgen --url http://127.0.0.1:8000 --rate 20 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

import aiohttp

from harness.images import Body, make_bodies, make_images
from harness.stats import percentile
from service.heap import frozen_heap

__all__ = ["CpuWatch", "RunResult", "run_closed", "run_closed_together", "run_open"]

_CHECKS = (b'"detections"', b'"top"')  # a detection's answer, a classifier's


class CpuWatch:
    """CPU time of some processes (psutil) and of this one (getrusage) between start and stop.

    Percentages are of one core: 200 means two cores fully busy.
    """

    def __init__(self, pids: dict[str, int] | None = None) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in (pids or {}).items()}
        self._t0 = 0.0
        self._self0 = 0.0
        self._base: dict[str, float] = {}

    @staticmethod
    def _self_cpu() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime + ru.ru_stime

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, proc in self._procs.items():
            try:
                t = proc.cpu_times()
                out[name] = t.user + t.system
            except Exception:  # the process may have gone; psutil raises its own kinds
                out[name] = float("nan")
        return out

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._self0 = self._self_cpu()
        self._base = self._cpu()

    def stop(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self._t0, 1e-9)
        now = self._cpu()
        res = {f"cpu_{k}_pct": 100 * (now[k] - self._base[k]) / wall for k in now}
        res["cpu_loadgen_pct"] = 100 * (self._self_cpu() - self._self0) / wall
        return res


@dataclass
class RunResult:
    mode: str
    target: str
    concurrency: int | None
    offered_rps: float | None
    seconds: float
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    throughput: float = 0.0  # answers with 200 per second of the measured window
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    max_ms: float = float("nan")
    max_lag_ms: float = 0.0  # open loop: how late the generator fired against its schedule
    scheduled_rps: float | None = None  # open loop: arrivals actually drawn in the window / s
    cpu: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        load = (f"c={self.concurrency}" if self.mode == "closed"
                else f"rate={self.offered_rps:.1f}/s (drawn {self.scheduled_rps:.1f}/s)")
        errs = f" errors={self.errors}" if self.errors else ""
        cpu = " ".join(f"{k[4:-4]}={v:.0f}%" for k, v in self.cpu.items())
        return (f"{self.target} {self.mode} {load}: {self.throughput:.1f} img/s "
                f"p50={self.p50_ms:.1f} p95={self.p95_ms:.1f} p99={self.p99_ms:.1f} ms "
                f"(n={self.ok}{errs}) cpu[{cpu}]")


class _Recorder:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.sent = 0

    def finish(self, res: RunResult, wall: float) -> RunResult:
        lat = self.latencies
        res.sent, res.ok = self.sent, len(lat)
        res.errors = dict(self.errors)
        res.throughput = len(lat) / wall if wall > 0 else 0.0
        if lat:
            res.p50_ms, res.p95_ms, res.p99_ms = (percentile(lat, q) for q in (50, 95, 99))
            res.mean_ms, res.max_ms = sum(lat) / len(lat), max(lat)
        return res


async def _post(session: aiohttp.ClientSession, url: str, body: Body) -> str | None:
    """Send one request; ``None`` when it succeeded, else what went wrong."""
    try:
        async with session.post(url, data=body.data,
                                headers={"Content-Type": body.content_type}) as resp:
            payload = await resp.read()
            if resp.status != 200:
                return str(resp.status)
            head = payload[:4096]
            return None if any(check in head for check in _CHECKS) else "bad_body"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


def _session(limit: int, timeout: float) -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False,
                                enable_cleanup_closed=False, ttl_dns_cache=None)
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout),
                                 skip_auto_headers=("User-Agent",))


async def _closed(loads: Sequence[tuple[str, int]], bodies: Sequence[Body], seconds: float,
                  warmup: float, watch: CpuWatch, request_timeout: float) -> list[RunResult]:
    """Closed loop on each ``(url, clients)`` of ``loads`` at once, in one measured window, the
    clients of all of them cycling through ``bodies`` together: each load's result."""
    recs = [_Recorder() for _ in loads]
    loop = asyncio.get_running_loop()
    counter = iter(range(1 << 62))
    start = loop.time() + warmup
    end = start + seconds

    async def client(session: aiohttp.ClientSession, url: str, rec: _Recorder) -> None:
        while loop.time() < end:
            body = bodies[next(counter) % len(bodies)]
            t0 = loop.time()
            err = await _post(session, url, body)
            t1 = loop.time()
            if not start <= t1 <= end:
                continue  # answered during the warm-up, or after the window closed
            rec.sent += 1
            if err is None:
                rec.latencies.append((t1 - t0) * 1000)
            else:
                rec.errors[err] += 1

    async with _session(sum(c for _, c in loads), request_timeout) as session:
        tasks = [asyncio.create_task(client(session, url, rec))
                 for (url, clients), rec in zip(loads, recs, strict=True) for _ in range(clients)]
        await asyncio.sleep(max(0.0, start - loop.time()))
        watch.start()
        await asyncio.sleep(max(0.0, end - loop.time()))
        cpu = watch.stop()
        await asyncio.gather(*tasks)
    out = []
    for (url, clients), rec in zip(loads, recs, strict=True):
        res = RunResult("closed", url, clients, None, seconds, cpu=cpu)
        out.append(rec.finish(res, seconds))
    if len(loads) > 1:  # the whole load: every answer of every URL
        whole = _Recorder()
        for rec in recs:
            whole.sent += rec.sent
            whole.latencies += rec.latencies
            whole.errors.update(rec.errors)
        res = RunResult("closed", " + ".join(url for url, _ in loads),
                        sum(c for _, c in loads), None, seconds, cpu=cpu)
        out.insert(0, whole.finish(res, seconds))
    return out


def poisson_schedule(rate: float, seconds: float, seed: int) -> list[float]:
    """Arrival offsets (s) of a Poisson process at ``rate``/s over ``seconds``."""
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            return out
        out.append(t)


async def _open(url: str, bodies: Sequence[Body], rate: float, seconds: float, warmup: float,
                watch: CpuWatch, request_timeout: float, max_connections: int, seed: int) -> RunResult:
    rec = _Recorder()
    res = RunResult("open", url, None, rate, seconds)
    loop = asyncio.get_running_loop()
    schedule = poisson_schedule(rate, warmup + seconds, seed)
    res.scheduled_rps = sum(1 for t in schedule if t >= warmup) / seconds
    pending: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, i: int, at: float, measured: bool) -> None:
        err = await _post(session, url, bodies[i % len(bodies)])
        if not measured:
            return
        rec.sent += 1
        if err is None:
            rec.latencies.append((loop.time() - at) * 1000)  # from the scheduled send time
        else:
            rec.errors[err] += 1

    async with _session(max_connections, request_timeout) as session:
        t0 = loop.time() + 0.05
        started = False
        for i, offset in enumerate(schedule):
            at = t0 + offset
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = offset >= warmup
            if measured and not started:
                watch.start()
                started = True
            if measured:
                res.max_lag_ms = max(res.max_lag_ms, (loop.time() - at) * 1000)
            task = asyncio.create_task(one(session, i, at, measured))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(max(0.0, t0 + warmup + seconds - loop.time()))
        if not started:
            watch.start()
        res.cpu = watch.stop()
        if pending:
            await asyncio.wait(pending)
    return rec.finish(res, seconds)


_T = TypeVar("_T")


def _run(coro_fn: Callable[[], Awaitable[_T]]) -> _T:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    # the generator's own collections would count as the server's latency (service.heap)
    with frozen_heap(), asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


def run_closed(url: str, bodies: Sequence[Body], concurrency: int, seconds: float, *,
               warmup: float = 1.0, pids: dict[str, int] | None = None,
               timeout: float = 60.0) -> RunResult:
    """Closed loop at ``concurrency`` for ``seconds`` after ``warmup`` (``url`` is the full URL)."""
    watch = CpuWatch(pids)
    return _run(lambda: _closed([(url, concurrency)], bodies, seconds, warmup, watch, timeout))[0]


def run_closed_together(loads: Sequence[tuple[str, int]], bodies: Sequence[Body], seconds: float,
                        *, warmup: float = 1.0, pids: dict[str, int] | None = None,
                        timeout: float = 60.0) -> list[RunResult]:
    """Closed loop on several URLs at once, ``(url, clients)`` each, in one window after
    ``warmup``: the whole load's result first (every answer's latency pooled), then each URL's."""
    watch = CpuWatch(pids)
    return _run(lambda: _closed(loads, bodies, seconds, warmup, watch, timeout))


def run_open(url: str, bodies: Sequence[Body], rate: float, seconds: float, *,
             warmup: float = 1.0, pids: dict[str, int] | None = None, timeout: float = 60.0,
             max_connections: int = 512, seed: int = 7) -> RunResult:
    """Poisson arrivals at ``rate``/s for ``seconds`` after ``warmup``; latency from the schedule."""
    watch = CpuWatch(pids)
    return _run(lambda: _open(url, bodies, rate, seconds, warmup, watch, timeout,
                              max_connections, seed))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    ap.add_argument("--path", default="/v1/detect")
    ap.add_argument("--concurrency", type=int, default=16, help="closed loop (the default mode)")
    ap.add_argument("--rate", type=float, default=None, help="open loop: requests per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--images", type=int, default=64, help="distinct JPEGs to cycle through")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    bodies = make_bodies(make_images(args.images))
    url = args.url.rstrip("/") + args.path
    if args.rate is None:
        res = run_closed(url, bodies, args.concurrency, args.seconds, warmup=args.warmup)
    else:
        res = run_open(url, bodies, args.rate, args.seconds, warmup=args.warmup)
    print(json.dumps(res.to_dict(), indent=2) if args.json else res.summary())
    return 0 if res.ok and not res.errors else 1


if __name__ == "__main__":
    raise SystemExit(main())

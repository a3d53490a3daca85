"""Overload: five times the saturation rate, open loop, against a real service process.

Settings chosen for it, the latency-first ones for a CPU: ``--max-batch-size 1``,
``YOLOSERVE_MAX_QUEUE=0``, ``YOLOSERVE_MAX_CONCURRENT_BATCHES=1`` (one forward pass at a time, on
every core) and ``YOLOSERVE_SPIN=false`` (ONNX Runtime's threads sleep between
operators instead of spinning, so the refusals and the admitted requests' decoding get the cores
while a forward pass runs; with spinning the admitted p99 measured 2.2-2.4x the unloaded p99 here,
without it 1.1-1.6x). On a CPU a batch of
n costs about n single passes, so batching buys no latency there, and every waiting item adds one
full pass to the wait of those behind it. With one waiting (``MAX_QUEUE=1``) an admitted request
nearly always waits a whole pass before its own: 2x its unloaded latency plus the CPU the refusals
take, measured at 2.96x here, too close to the 3x goal. With ``MAX_QUEUE=0`` only what the running
batch holds is admitted, so an admitted request runs at once (measured 1.2-1.5x), at the price of
the few milliseconds between two passes in which the next request is decoded. The service refuses
past that before reading the image (``Inferencer`` admission), so the excess costs almost nothing
and is answered at once with 503 + ``Retry-After``. The saturation rate is then the throughput of
one client sending back to back (the service admits one request at a time).

The open loop runs 20 s (several thousand requests), long enough for stable p95 and p99 figures.

What is asserted, and why these bounds:
- every request is answered (no connection errors), with 200, 503 ``overloaded`` + ``Retry-After``
  or 504 ``deadline_exceeded``, and never after its ``X-Request-Timeout-Ms`` deadline;
- the refusals are fast: 95 % within 50 ms (the goal), p99 under 100 ms. Measured here (2 shared
  cores, 5 runs): p95 3.2-4.2 ms, p99 5.1-6.8 ms; on a
  busy machine the refusal waits for the CPU like everything else, so the p99 bound is looser
  than the goal (the figures are in the test's output);
- the admitted requests' p99 is under 3x their unloaded p99 (of 120 requests one after another;
  measured 1.2-1.5x here);
- within 1 s of the load stopping, a request is served (200) again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import psutil
import pytest

from harness.images import Body, make_bodies, make_images
from harness.stats import percentile as p
from tests.reliability.loadtools import Shot, closed_loop, open_loop, session, settle_fds, shoot
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow

OVERLOAD = 5.0
SECONDS = 20.0
DEADLINE_MS = 2000
REFUSAL_P95_MS = 50.0
REFUSAL_P99_MS = 100.0
LATENCY_FACTOR = 3.0
RECOVERY_S = 1.0
UNLOADED = 120  # requests one after another: enough for a p99 that is not just the slowest


def _summary(unloaded: list[Shot], rate: float, shots: list[Shot], recovery_s: float) -> str:
    ok = [s.latency_ms for s in shots if s.status == 200]
    refused = [s.latency_ms for s in shots if s.status == 503]
    base = [s.latency_ms for s in unloaded]
    lag = max((s.sent - s.scheduled) * 1000 for s in shots)
    return (f"unloaded p50 {p(base, 50):.1f} p99 {p(base, 99):.1f} ms; saturation {rate:.1f} req/s; "
            f"offered {rate * OVERLOAD:.1f} req/s for {SECONDS:g} s: {len(shots)} requests, "
            f"{dict(Counter(s.status for s in shots))}; admitted p50 {p(ok, 50):.1f} "
            f"p99 {p(ok, 99):.1f} ms; 503 p50 {p(refused, 50):.1f} p95 {p(refused, 95):.1f} "
            f"p99 {p(refused, 99):.1f} "
            f"max {max(refused, default=0):.1f} ms; slowest answer "
            f"{max(s.latency_ms for s in shots):.1f} ms; generator lag max {lag:.1f} ms; "
            f"recovered in {recovery_s * 1000:.0f} ms")


async def _recovery(url: str, body_index: int, since: float, bodies: list[Body]) -> float:
    """Seconds from ``since`` until a request is answered 200 (requests sent one after another)."""
    loop = asyncio.get_running_loop()
    async with session() as http:
        for i in range(1000):
            shot = await shoot(http, url, bodies[(body_index + i) % len(bodies)], loop.time())
            if shot.status == 200:
                return shot.done - since
    raise AssertionError("the service did not serve a request again")


async def test_five_times_saturation() -> None:
    env = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false",
           "YOLOSERVE_MAX_QUEUE": "0", "YOLOSERVE_SPIN": "false",
           "YOLOSERVE_MAX_CONCURRENT_BATCHES": "1"}
    proc = ServiceProcess("--model", "models/demo.onnx", "--max-batch-size", "1", env=env)
    try:
        proc.start()
        assert proc.proc is not None
        url = f"{proc.url}/v1/detect"
        bodies = make_bodies(make_images(64, 320, 240))
        await closed_loop(url, bodies, concurrency=1, total=8)  # warm the process up
        fds = psutil.Process(proc.proc.pid).num_fds()
        started = time.monotonic()
        unloaded = await closed_loop(url, bodies, concurrency=1, total=UNLOADED)
        rate = sum(s.status == 200 for s in unloaded) / (time.monotonic() - started)

        headers = {"X-Request-Timeout-Ms": str(DEADLINE_MS)}
        shots, last_sent = await open_loop(url, bodies, rate=rate * OVERLOAD, seconds=SECONDS,
                                           headers=headers,
                                           request_timeout=DEADLINE_MS / 1000 + 10)
        recovery = await _recovery(url, 7, last_sent, bodies)
        summary = _summary(unloaded, rate, shots, recovery)
        print(summary)

        statuses = Counter((s.status, s.code) for s in shots)
        assert set(statuses) <= {(200, None), (503, "overloaded"), (504, "deadline_exceeded")}, summary
        assert statuses[(503, "overloaded")] > len(shots) / 2, summary  # it was overloaded
        refused = [s for s in shots if s.status == 503]
        assert all(s.retry_after is not None and int(s.retry_after) >= 1 for s in refused)
        refusal_ms = [s.latency_ms for s in refused]
        admitted = [s.latency_ms for s in shots if s.status == 200]
        base_p99 = p([s.latency_ms for s in unloaded], 99)
        # The latency goals are about this service, not about other programs on the machine:
        # they are asserted when the machine was not busier than its cores during the run.
        if os.getloadavg()[0] <= (os.cpu_count() or 1):
            assert p(refusal_ms, 95) < REFUSAL_P95_MS, summary
            assert p(refusal_ms, 99) < REFUSAL_P99_MS, summary
            assert p(admitted, 99) < LATENCY_FACTOR * base_p99, summary
        assert max(s.latency_ms for s in shots) < DEADLINE_MS, summary  # nothing hangs
        assert recovery < RECOVERY_S, summary
        settle_fds(proc.proc.pid, fds)
    finally:
        proc.stop()

"""A backend killed with SIGKILL in the middle of a 30-second, 50-concurrent load: no request
fails at the client, the backend is ejected within 2 s, and once restarted it gets traffic
again within the slow-start window."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import pytest

from tests.loadbalancer.harness import BackendProc, LBProc, Result, load, start_backends

SLOW_START = 3.0
HEALTH_INTERVAL = 0.25


async def _watch_state(lb: LBProc, backend_id: str, until: float) -> list[tuple[float, str]]:
    """Polls /lb/status (without blocking the load) and records the backend's state."""
    seen: list[tuple[float, str]] = []
    async with aiohttp.ClientSession(lb.admin_url) as session:
        while time.monotonic() < until:
            async with session.get("/lb/status") as response:
                status = await response.json()
            found = [b for b in status["backends"] if b["id"] == backend_id]
            seen.append((time.monotonic(), found[0]["state"] if found else "missing"))
            await asyncio.sleep(0.05)
    return seen


@dataclass
class Scenario:
    results: list[Result]
    states: list[tuple[float, str]]
    killed_at: float
    back_at: float


async def _kill_and_restart(victim: BackendProc, lb: LBProc) -> Scenario:
    """30 s of load at 50 concurrent; SIGKILL at 8 s, restart (same port) at 14 s."""
    started = time.monotonic()
    loader = asyncio.create_task(load(lb.url + "/v1/detect", duration=30.0, concurrency=50))
    watcher = asyncio.create_task(_watch_state(lb, victim.id, started + 30.0))
    await asyncio.sleep(8.0)  # let the load run before the fault (a schedule, not a sync)
    killed_at = time.monotonic()
    await asyncio.to_thread(victim.kill)
    await asyncio.sleep(6.0)
    await asyncio.to_thread(lambda: victim.start().wait_ready())
    back_at = time.monotonic()
    return Scenario(await loader, await watcher, killed_at, back_at)


@pytest.mark.slow
async def test_sigkill_under_load_loses_no_request_and_the_backend_comes_back() -> None:
    victim, survivor = start_backends([BackendProc("victim"), BackendProc("survivor")])
    flags = {
        "--health-interval": HEALTH_INTERVAL,
        "--unhealthy-threshold": 2,
        "--healthy-threshold": 1,
        "--outlier-consecutive-failures": 3,
        "--outlier-base-ejection": 1,
        "--slow-start-window": SLOW_START,
    }
    lb = LBProc([victim.url, survivor.url], *(str(x) for kv in flags.items() for x in kv))
    try:
        run = await _kill_and_restart(victim, lb.start().wait_ready())
    finally:
        lb.stop()
        victim.stop()
        survivor.stop()
    results = run.results
    failures = [(r.status, r.body[:200]) for r in results if r.status != 200]
    assert failures == [], failures[:5]
    assert len(results) > 5000  # it really was under load

    out = [t for t, state in run.states if t >= run.killed_at and state in ("ejected", "unhealthy")]
    assert out and out[0] - run.killed_at < 2.0, "not ejected within 2 s"
    back = run.back_at
    returned = [r.started for r in results if r.started >= back and r.upstream == victim.id]
    assert returned and returned[0] - back < SLOW_START, "no traffic within the slow start"
    # Slow start: a small share at first, about half once the window has passed.
    early = [r for r in results if back <= r.started < back + 1.0]
    late = [r for r in results if r.started >= back + SLOW_START + 1.0]
    early_share = sum(r.upstream == victim.id for r in early) / max(len(early), 1)
    late_share = sum(r.upstream == victim.id for r in late) / max(len(late), 1)
    assert early_share < late_share and late_share > 0.3, (early_share, late_share)

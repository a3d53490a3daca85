"""A backend killed with SIGKILL in the middle of a 30-second, 50-concurrent load: no request
fails at the client, the backend is ejected within 2 s, and once restarted it gets traffic
again within the slow-start window."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.loadbalancer.harness import BackendProc, LBProc, load, start_backends

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


@pytest.mark.slow
async def test_sigkill_under_load_loses_no_request_and_the_backend_comes_back() -> None:
    victim, survivor = start_backends([BackendProc("victim"), BackendProc("survivor")])
    lb = (
        LBProc(
            [victim.url, survivor.url],
            "--health-interval",
            str(HEALTH_INTERVAL),
            "--unhealthy-threshold",
            "2",
            "--healthy-threshold",
            "1",
            "--outlier-consecutive-failures",
            "3",
            "--outlier-base-ejection",
            "1",
            "--slow-start-window",
            str(SLOW_START),
        )
        .start()
        .wait_ready()
    )
    try:
        started = time.monotonic()
        loader = asyncio.create_task(load(lb.url + "/v1/detect", duration=30.0, concurrency=50))
        watcher = asyncio.create_task(_watch_state(lb, victim.id, started + 30.0))
        await asyncio.sleep(8.0)  # let the load run before the fault (a schedule, not a sync)
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(6.0)
        await asyncio.to_thread(lambda: victim.start().wait_ready())
        back_at = time.monotonic()
        results, states = await loader, await watcher
    finally:
        lb.stop()
        victim.stop()
        survivor.stop()

    failures = [(r.status, r.body[:200]) for r in results if r.status != 200]
    assert failures == [], failures[:5]
    assert len(results) > 5000  # it really was under load

    out = [t for t, state in states if t >= killed_at and state in ("ejected", "unhealthy")]
    assert out and out[0] - killed_at < 2.0, "not ejected within 2 s"
    returned = [r.started for r in results if r.started >= back_at and r.upstream == victim.id]
    assert returned and returned[0] - back_at < SLOW_START, "no traffic within the slow start"
    # Slow start: a small share at first, about half once the window has passed.
    early = [r for r in results if back_at <= r.started < back_at + 1.0]
    late = [r for r in results if r.started >= back_at + SLOW_START + 1.0]
    early_share = sum(r.upstream == victim.id for r in early) / max(len(early), 1)
    late_share = sum(r.upstream == victim.id for r in late) / max(len(late), 1)
    assert early_share < late_share and late_share > 0.3, (early_share, late_share)

"""Start-up and shutdown of a real process: ready only when warmed up, SIGTERM drains."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow


async def test_sigterm_under_load_answers_every_admitted_request() -> None:
    proc = ServiceProcess("--max-batch-size", "4", env={"YOLOSERVE_CACHE_ENABLED": "false"}).start()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=60) as c:
            tasks = [asyncio.create_task(c.post("/v1/detect", files={"image": jpeg(i % 8)}))
                     for i in range(40)]
            # wait until the service holds work, then ask it to stop
            for _ in range(200):
                ready = (await c.get("/health/ready")).json()
                if ready.get("queue_depth", 0) + ready.get("inflight_batches", 0) > 0:
                    break
            proc.signal(signal.SIGTERM)
            results = await asyncio.gather(*tasks, return_exceptions=True)
        answered = [r for r in results if isinstance(r, httpx.Response)]
        assert len(answered) == len(results), [r for r in results if not isinstance(r, httpx.Response)]
        assert all(r.status_code == 200 for r in answered), [r.status_code for r in answered]
        assert proc.proc is not None
        # uvicorn re-raises the signal once it has shut down cleanly, so -SIGTERM is a clean exit
        assert proc.proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        proc.stop()

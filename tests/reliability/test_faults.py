"""Faults: an engine that fails on one image, slow and idle clients, a backend SIGKILLed under load.

- An exception inside the engine for one image fails that image only: its batch-mates (the batcher
  bisects a failing batch) and later requests are served, the answer is a 500 in the contract's
  format without the exception's text, and the app's asyncio tasks return to their baseline.
- Bodies trickled one byte per 100 ms and 200 idle open connections do not stall other clients,
  and the service's file descriptors return to their baseline once they are gone.
- A backend SIGKILLed under load behind the balancer loses no client request: the balancer retries
  elsewhere what it can, and the client retries what the balancer could not.
SIGTERM under load (drain) is covered by tests/service/test_lifecycle.py.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest
from numpy.typing import NDArray
from PIL import Image

from clients import AsyncDetectionClient, ItemResult
from harness.procs import await_until, start_all
from harness.stats import percentile as p
from service.app import create_app
from service.settings import Settings
from tests.loadbalancer.harness import LBProc
from tests.reliability.loadtools import settle_fds
from tests.reliability.rawhttp import open_idle, trickle
from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess

POISON_BGR = (3, 141, 59)


def _poison_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), POISON_BGR[::-1]).save(out, format="PNG")
    return out.getvalue()


class PoisonBackend:
    """The real backend, except that a batch holding the poison image raises."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.mixed_batches = 0  # failing batches that also held good images

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def forward(self, batch: NDArray[np.uint8]) -> Any:
        centre = batch[:, batch.shape[1] // 2, batch.shape[2] // 2]
        poisoned = (centre == np.array(POISON_BGR, np.uint8)).all(axis=1)
        if poisoned.any():
            self.mixed_batches += int(len(batch) > 1)
            raise RuntimeError("CUDA kernel failed in /opt/secret/engine.py line 42")
        return self.real.forward(batch)


async def _tasks_settle(baseline: int, within: float = 10.0) -> None:
    """Wait until the loop runs no more tasks than ``baseline`` (fails after ``within`` s)."""

    async def settled() -> bool:
        return len(asyncio.all_tasks()) <= baseline

    await await_until(settled, within, f"asyncio tasks back to {baseline}", every=0.01)


def _assert_internal_error(body: dict[str, Any]) -> None:
    assert body["error"]["code"] == "internal_error"
    assert "secret" not in str(body) and "CUDA" not in str(body) and ".py" not in str(body)


@asynccontextmanager
async def _app(**overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """An in-process app; app exceptions become answers, as under uvicorn (not test errors)."""
    app = create_app(Settings(model=Path("models/demo.onnx"), **overrides))
    async with app.router.lifespan_context(app):
        state = app.state.yoloserve

        async def ready() -> bool:  # the model may load in the background after start-up
            return bool(state.inferencer is not None and state.lifecycle.value == "ready")

        await await_until(ready, 120, "the model to load")
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, state


async def test_engine_exception_fails_only_that_image() -> None:
    before = len(asyncio.all_tasks())
    poison = _poison_png()
    async with _app(cache_enabled=False, max_wait_ms=100, warmup=False) as (c, state):
        fake = PoisonBackend(state.inferencer._engine.backend)
        state.inferencer._engine.backend = fake
        idle = len(asyncio.all_tasks())
        good = [jpeg(i, (160, 120)) for i in range(7)]

        files = [("images", (f"{i}.jpg", img)) for i, img in enumerate(good[:3])]
        files.insert(1, ("images", ("poison.png", poison)))
        batch = await c.post("/v1/detect/batch", files=files)
        assert batch.status_code == 200
        items = batch.json()["results"]
        assert [("error" in item) for item in items] == [False, True, False, False]
        _assert_internal_error(items[1])

        singles = await asyncio.gather(
            *(c.post("/v1/detect", files={"image": img}) for img in [*good[3:], poison]))
        assert [r.status_code for r in singles] == [200, 200, 200, 200, 500]
        _assert_internal_error(singles[-1].json())
        assert fake.mixed_batches >= 1  # the poison shared a batch with good images

        assert (await c.get("/health/ready")).status_code == 200
        assert (await c.post("/v1/detect", files={"image": good[0]})).status_code == 200
        await _tasks_settle(idle)
    await _tasks_settle(before)


# -- slow and idle clients ------------------------------------------------------------------------

async def _latencies(url: str, count: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for i in range(count):
            t0 = time.perf_counter()
            r = await c.post("/v1/detect", files={"image": jpeg(i % 8, (160, 120))})
            out.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
    return out


def _not_stalled(base: list[float], during: list[float]) -> None:
    # generous for a shared machine: a stall would be seconds (the slow peer's whole body)
    assert p(during, 50) < 3 * p(base, 50) + 100, (p(base, 50), p(during, 50))
    assert max(during) < 5000, max(during)


@pytest.mark.slow
async def test_trickled_bodies_do_not_stall_others(served: ServiceProcess, fd_guard: int) -> None:
    base = await _latencies(served.url, 10)
    body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
            + jpeg(0, (160, 120)) + b"\r\n--b--\r\n")
    stop = asyncio.Event()
    slow = [asyncio.create_task(trickle(served.port, "/v1/detect",
                                        {"content-type": "multipart/form-data; boundary=b"},
                                        body, 0.1, stop)) for _ in range(4)]
    try:
        during = await _latencies(served.url, 15)
    finally:
        stop.set()
        sent = await asyncio.gather(*slow)
    assert all(0 < n < len(body) for n in sent)  # they were still trickling the whole time
    _not_stalled(base, during)


@pytest.mark.slow
async def test_idle_connections_do_not_stall_others(served: ServiceProcess, fd_guard: int) -> None:
    base = await _latencies(served.url, 10)
    idle = await open_idle(served.port, 100)
    idle += await open_idle(served.port, 100, b"POST /v1/detect HTTP/1.1\r\nhost: x\r\n")
    try:
        assert served.proc is not None
        server = psutil.Process(served.proc.pid)

        async def all_accepted() -> bool:
            return bool(server.num_fds() >= fd_guard + 190)

        await await_until(all_accepted, 10, "the server to accept the idle connections")
        during = await _latencies(served.url, 15)
    finally:
        for w in idle:
            w.close()
    _not_stalled(base, during)


# -- a backend killed under load behind the balancer ----------------------------------------------

class _Retries(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "retrying" in record.getMessage()


def _images(count: int) -> Iterable[bytes]:
    return [jpeg(i % 16, (128, 96)) for i in range(count)]


@pytest.mark.slow
async def test_sigkill_behind_the_balancer_loses_no_request() -> None:
    env = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}
    victim = ServiceProcess("--model", "models/demo.onnx", env=env)
    survivor = ServiceProcess("--model", "models/demo.onnx", env=env)
    lb: LBProc | None = None
    retries = _Retries()
    logging.getLogger("clients").addHandler(retries)
    logging.getLogger("clients").setLevel(logging.INFO)
    try:
        start_all([victim, survivor])
        lb = LBProc([victim.url, survivor.url], "--health-interval", "0.25",
                    "--slow-start-window", "0", "--outlier-consecutive-failures", "2")
        lb.start().wait_ready(timeout=60)
        assert lb.proc is not None and survivor.proc is not None
        lb_fds = psutil.Process(lb.proc.pid).num_fds()
        total, kill_after = 240, 60
        outcomes: list[Any] = []
        async with AsyncDetectionClient(lb.url, timeout=60, max_attempts=4) as client:
            async for item in client.detect_many(_images(total), concurrency=16):
                outcomes.append(item)
                if len(outcomes) == kill_after:
                    assert victim.proc is not None
                    victim.proc.kill()  # SIGKILL with requests in flight on it
        failed = [o for o in outcomes if not isinstance(o, ItemResult)]
        assert len(outcomes) == total and not failed, [str(o.error) for o in failed][:5]
        assert victim.proc is not None and victim.proc.wait(10) == -9
        status = lb.status()["backends"]
        dead = next(b for b in status if b["url"] == victim.url)
        assert dead["health"] != "healthy" or dead.get("ejected_until"), dead
        # the balancer closes what it held to both (idle pooled connections expire after 4 s)
        settle_fds(lb.proc.pid, lb_fds, timeout=30)
    finally:
        logging.getLogger("clients").removeHandler(retries)
        if lb is not None:
            lb.stop()
        victim.stop()
        survivor.stop()
    print(f"client retries: {retries.count}")

"""Shared state in one test process: two apps (as two workers would be) on one real Redis, the
fleet-wide bucket, the circuit around a Redis that is down, and the binary entry format."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import RedisServer, free_port
from service.engine.types import Detection, Detections
from service.ratelimit import RateLimiter
from service.shared import (
    CodecError,
    SharedMetrics,
    SharedRateLimiter,
    SharedStore,
    StoreUnavailable,
    decode,
    encode,
)
from tests.service.conftest import app_client, jpeg


def _value(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _store(url: str, registry: CollectorRegistry | None = None) -> SharedStore:
    metrics = SharedMetrics(registry or CollectorRegistry())
    return SharedStore.from_url(url, prefix="t:", pool_size=4, connect_timeout_s=0.2,
                                timeout_s=0.1, metrics=metrics)


def test_entry_format_round_trips_exactly() -> None:
    items = [Detection(3, "star", 0.912345678, 1.5, 2.25, 300.125, 400.0625),
             Detection(0, "circle", 0.25, 0.0, 0.0, 1.0, 1.0)]
    data = encode(Detections.from_items(640, 480, items), 6)
    assert len(data) == 13 + 2 * 42
    assert decode(data, {0: "circle", 3: "star"}) == (Detections.from_items(640, 480, items), 6)
    with pytest.raises(CodecError):
        decode(data[:-1], {})


async def test_two_processes_compute_an_image_once(redis_server: RedisServer) -> None:
    settings = {"redis_url": redis_server.redis_url, "redis_key_prefix": f"t{time.time_ns()}:",
                "warmup": False}
    async with app_client(**settings) as a, app_client(**settings) as b:
        img = jpeg(3)
        first = await a.post("/v1/detect", files={"image": ("one.jpg", img)})
        second = await b.post("/v1/detect", files={"image": ("two.jpg", img)})
        assert first.json()["processing_metadata"]["cached"] is False
        assert second.json()["processing_metadata"]["cached"] is True  # from Redis
        assert second.json()["detections"] == first.json()["detections"]
        assert second.json()["image_name"] == "two.jpg"
        text = (await b.get("/metrics")).text
        assert _value(text, "model_inference_total") == 0  # b never ran the model
        assert _value(text, "result_cache_lookups_total", level="shared", result="hit") == 1
        # other parameters are another key
        other = await b.post("/v1/detect?conf=0.6", files={"image": ("two.jpg", img)})
        assert other.json()["processing_metadata"]["cached"] is False


async def test_bucket_is_shared_and_falls_back_to_the_process(redis_server: RedisServer) -> None:
    one, two = _store(redis_server.redis_url), _store(redis_server.redis_url)
    try:
        client = f"client-{time.time_ns()}"
        limiters = [SharedRateLimiter(s, RateLimiter(rate=1.0, burst=3)) for s in (one, two)]
        waits = [await limiters[i % 2].acquire(client) for i in range(5)]
        assert waits[:3] == [0, 0, 0]  # one burst of 3 between the two processes
        assert 0.5 < waits[3] <= 1.0 and 0.5 < waits[4] <= 1.0
        # Redis unreachable: each process limits on its own, at once
        dead = _store(f"redis://127.0.0.1:{free_port()}/0")
        local = SharedRateLimiter(dead, RateLimiter(rate=1.0, burst=2))
        assert [await local.acquire(client) for _ in range(3)][:2] == [0, 0]
        assert not dead.available
        await dead.aclose()
    finally:
        await one.aclose()
        await two.aclose()


async def test_circuit_opens_once_and_closes_when_redis_returns() -> None:
    if RedisServer.binary() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    registry = CollectorRegistry()
    store = _store(f"redis://127.0.0.1:{port}/0", registry)
    try:
        with pytest.raises(StoreUnavailable):
            await store.call("get", lambda r: r.get("x"))
        start = time.perf_counter()
        for _ in range(100):  # an open circuit answers at once, without a round trip
            with pytest.raises(StoreUnavailable):
                await store.call("get", lambda r: r.get("x"))
        assert time.perf_counter() - start < 0.05
        assert registry.get_sample_value("shared_store_incidents_total") == 1
        server = RedisServer("redis-late", port=port)
        await asyncio.to_thread(server.start, True)
        try:
            back = time.monotonic()
            while not store.available:
                assert time.monotonic() - back < 5, "sharing not back within 5 s"
                await asyncio.sleep(0.02)  # polling the probe's outcome, with a deadline
            assert await store.call("set", lambda r: r.set("t:x", b"1")) is True
        finally:
            server.stop()
    finally:
        await store.aclose()


async def test_a_frozen_redis_costs_one_timeout_then_nothing(redis_server: RedisServer) -> None:
    """Redis stopped (SIGSTOP: connections open, no answers): the first call waits out the
    timeout, the circuit opens, later requests do not wait at all; SIGCONT: sharing resumes."""
    settings = {"redis_url": redis_server.redis_url, "redis_key_prefix": f"f{time.time_ns()}:",
                "redis_timeout_ms": 100.0, "rate_limit_rps": 1000.0, "warmup": False}
    async with app_client(**settings) as c:
        assert (await c.post("/v1/detect", files={"image": jpeg(1)})).status_code == 200
        redis_server.signal(signal.SIGSTOP)
        try:
            timed = []
            for i in range(4):
                start = time.perf_counter()
                r = await c.post("/v1/detect", files={"image": jpeg(1)}, params={"conf": 0.3 + i / 10})
                timed.append(time.perf_counter() - start)
                assert r.status_code == 200
            assert timed[0] >= 0.09 and max(timed[1:]) < 1.0  # one timeout, then no waiting
            text = (await c.get("/metrics")).text
            assert _value(text, "shared_store_incidents_total") == 1
            assert _value(text, "shared_store_errors_total", kind="timeout") == 1
            assert _value(text, "rate_limit_decisions_total", where="local") >= 3
            assert (await c.get("/health/ready")).status_code == 200
        finally:
            redis_server.signal(signal.SIGCONT)
        store = c.app.state.yoloserve.shared_store  # type: ignore[attr-defined]
        back = time.monotonic()
        while not store.available:
            assert time.monotonic() - back < 5, "sharing not back within 5 s"
            await asyncio.sleep(0.02)  # polling the probe's outcome, with a deadline
        r = await c.post("/v1/detect", files={"image": jpeg(2)})
        assert r.status_code == 200
        text = (await c.get("/metrics")).text
        assert _value(text, "result_cache_lookups_total", level="shared", result="miss") >= 2


def test_the_url_names_tls_password_and_database() -> None:
    from service.settings import Settings
    from service.shared import open_store

    metrics = SharedMetrics(CollectorRegistry())
    assert open_store(Settings(), metrics) is None  # no URL: no Redis, each process its own
    store = open_store(Settings(redis_url="rediss://app:s3cret@cache.internal:6380/3",
                                redis_pool_size=7, redis_key_prefix="prod:"), metrics)
    assert store is not None
    pool = store.client.connection_pool
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("cache.internal", 6380, 3)
    assert (kwargs["username"], kwargs["password"]) == ("app", "s3cret")
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.max_connections == 7
    assert store.key("r", "ab") == "prod:r:ab"

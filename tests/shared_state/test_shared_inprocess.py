"""Shared state in one test process: two apps (as two workers would be) on one real Redis, the
fleet-wide bucket, the circuit around a Redis that is down, and the binary entry format."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import RedisServer, free_port
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
    data = encode(Detections(640, 480, items), 6)
    assert len(data) == 13 + 2 * 42
    assert decode(data, {0: "circle", 3: "star"}) == (Detections(640, 480, items), 6)
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

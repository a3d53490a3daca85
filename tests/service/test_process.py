"""Against real ``yoloserve serve`` processes on loopback ports."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[ServiceProcess]:
    with ServiceProcess("--max-batch-size", "8", "--max-wait-ms", "10",
                        env={"YOLOSERVE_CACHE_ENABLED": "false"}) as proc:
        yield proc


def _metric(text: str, name: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name)


async def test_64_concurrent_requests_batch_and_match_single(server: ServiceProcess) -> None:
    images = [jpeg(i, (320 + 16 * i, 240 + 8 * i)) for i in range(16)]
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:
        singles = []
        for img in images:  # one at a time: each is its own batch
            r = await c.post("/v1/detect", files={"image": img})
            singles.append(r.json()["detections"])
        before = (await c.get("/metrics")).text
        rs = await asyncio.gather(*(c.post("/v1/detect", files={"image": images[i % 16]})
                                    for i in range(64)))
        after = (await c.get("/metrics")).text
    assert all(r.status_code == 200 for r in rs)
    for i, r in enumerate(rs):
        assert r.json()["detections"] == singles[i % 16], i
    sizes = [r.json()["processing_metadata"]["batch_size"] for r in rs]
    assert max(sizes) > 1
    batches = _metric(after, "inference_batch_size_count") - _metric(before, "inference_batch_size_count")
    items = _metric(after, "inference_batch_size_sum") - _metric(before, "inference_batch_size_sum")
    assert items == 64 and batches < 64  # the histogram shows batches larger than 1


def _bucket(text: str, name: str, le: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and s.labels.get("le") == le)


async def test_the_loaded_heap_is_frozen_and_collections_stay_short(server: ServiceProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        rs = await asyncio.gather(*(c.post("/v1/detect", files={"image": jpeg(i, (320, 240))})
                                    for i in range(48)))
        text = (await c.get("/metrics")).text
    assert all(r.status_code == 200 for r in rs)
    # torch, ONNX Runtime, Ultralytics and the app: hundreds of thousands of objects, frozen
    assert _metric(text, "gc_frozen_objects") > 100_000
    collections = _metric(text, "gc_pause_seconds_count")
    assert collections > 0  # requests make garbage; every collection is timed
    # none walked the frozen heap (a full collection of it takes about 200 ms here)
    assert _bucket(text, "gc_pause_seconds_bucket", "0.1") == collections


async def _trickle(total: int) -> AsyncIterator[bytes]:
    yield b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    chunk = b"\0" * (1 << 20)
    for _ in range(total >> 20):
        yield chunk


async def test_50mb_upload_refused_without_reading_it_all(server: ServiceProcess) -> None:
    headers = {"content-type": "multipart/form-data; boundary=xyz"}
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
        start = time.monotonic()
        try:
            r = await c.post("/v1/detect", content=_trickle(50 << 20), headers=headers)
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server answered 413 and closed before the client finished sending
        assert time.monotonic() - start < 10
    # a declared Content-Length over the limit is refused before any of the body is sent
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                 b"boundary=xyz\r\nContent-Length: " + str(50 << 20).encode() + b"\r\n\r\n")
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert b" 413 " in status_line


def test_two_gunicorn_workers_serve_and_metrics_aggregate() -> None:
    with ServiceProcess("--workers", "2", env={"YOLOSERVE_CACHE_ENABLED": "false"}) as proc:
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            for i in range(12):
                assert c.post("/v1/detect", files={"image": jpeg(i % 8)}).status_code == 200
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # both workers must have started and answered
                families = list(text_string_to_metric_families(c.get("/metrics").text))
                pids = {s.labels.get("pid") for f in families for s in f.samples
                        if s.name == "model_info"}
                total = sum(s.value for f in families for s in f.samples
                            if s.name == "model_inference_total")
                if len(pids) == 2:
                    break
                c.get("/health/ready")
        assert len(pids) == 2  # one model_info series per worker process
        assert total == 12  # whichever worker answered the scrape, it counted both


def test_lambda_handler_matches_detect(server: ServiceProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    from service import lambda_handler

    monkeypatch.setenv("YOLOSERVE_MODEL", "models/demo.onnx")
    img = jpeg(6)
    event = {
        "resource": "/v1/detect", "path": "/v1/detect", "httpMethod": "POST",
        "headers": {"Content-Type": "image/jpeg"}, "queryStringParameters": None,
        "requestContext": {"resourcePath": "/v1/detect", "httpMethod": "POST", "stage": "prod"},
        "body": base64.b64encode(img).decode(), "isBase64Encoded": True,
    }
    lambda_handler._adapter.cache_clear()
    answer = lambda_handler.handler(event, None)
    assert answer["statusCode"] == 200
    import json

    body = json.loads(answer["body"])
    direct = httpx.post(f"{server.url}/v1/detect", files={"image": img}, timeout=30).json()
    assert body["detections"] == direct["detections"]
    bare = lambda_handler.handler({"body": base64.b64encode(img).decode()}, None)
    assert json.loads(bare["body"])["detections"] == direct["detections"]

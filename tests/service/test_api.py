"""Every endpoint of the contract, both body formats, every error row, headers and metrics."""

from __future__ import annotations

import asyncio
import base64

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import app_client, jpeg, png

pytestmark = pytest.mark.asyncio(loop_scope="module")


def _error(r: httpx.Response, status: int, code: str) -> dict[str, str]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text and "/work" not in r.text and ".py" not in r.text
    return dict(body["error"])


async def test_detect_multipart(client: httpx.AsyncClient, images: list[bytes]) -> None:
    r = await client.post("/v1/detect", files={"image": ("a.jpg", images[0], "image/jpeg")},
                          headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123"
    body = r.json()
    assert body["image_name"] == "a.jpg"
    assert body["image_dimensions"] == {"width": 480, "height": 360}
    assert body["detection_count"] == len(body["detections"])
    meta = body["processing_metadata"]
    assert meta["confidence_threshold"] == 0.25 and meta["iou_threshold"] == 0.7
    assert meta["batch_size"] >= 1 and len(meta["model_version"]) == 12
    assert set(meta["timings_ms"]) == {"queue", "preprocess", "inference", "postprocess", "total"}
    confs = [d["confidence"] for d in body["detections"]]
    assert confs == sorted(confs, reverse=True)
    for d in body["detections"]:
        b = d["box_2d"]
        assert 0 <= b["x_min"] < b["x_max"] <= 480 and 0 <= b["y_min"] < b["y_max"] <= 360
        assert d["box_area"] == pytest.approx((b["x_max"] - b["x_min"]) * (b["y_max"] - b["y_min"]),
                                              rel=1e-3)


async def test_json_base64_equals_multipart(client: httpx.AsyncClient, images: list[bytes]) -> None:
    a = await client.post("/v1/detect", files={"image": ("x.jpg", images[1])}, data={"conf": "0.1"})
    b = await client.post("/v1/detect", json={"image": base64.b64encode(images[1]).decode(),
                                              "image_name": "x.jpg", "conf": 0.1})
    c = await client.post("/v1/detect?conf=0.1", json={"image": base64.b64encode(images[1]).decode(),
                                                       "image_name": "x.jpg"})
    assert a.status_code == b.status_code == c.status_code == 200
    assert a.json()["detections"] == b.json()["detections"] == c.json()["detections"]
    assert a.json()["processing_metadata"]["confidence_threshold"] == 0.1


async def test_parameters_change_the_answer(client: httpx.AsyncClient, images: list[bytes]) -> None:
    low = (await client.post("/v1/detect?conf=0.05", files={"image": images[2]})).json()
    one = (await client.post("/v1/detect?conf=0.05&max_det=1", files={"image": images[2]})).json()
    assert one["detection_count"] == min(1, low["detection_count"])
    names = (await client.get("/v1/classes")).json()["classes"]
    only = (await client.post("/v1/detect?conf=0.05", files={"image": images[2]},
                              data={"classes": f"0,{names['2']}"})).json()
    assert {d["class_id"] for d in only["detections"]} <= {0, 2}


async def test_batch_in_order_with_per_item_errors(client: httpx.AsyncClient,
                                                   images: list[bytes]) -> None:
    files = [("images", ("a.jpg", images[0])), ("images", ("bad.jpg", b"not an image")),
             ("images", ("c.jpg", images[2]))]
    r = await client.post("/v1/detect/batch", files=files)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x.get("image_name") for x in results] == ["a.jpg", None, "c.jpg"]
    assert results[1]["error"]["code"] == "invalid_image"
    single = (await client.post("/v1/detect", files={"image": ("a.jpg", images[0])})).json()
    assert results[0]["detections"] == single["detections"]


async def test_annotate_returns_jpeg(client: httpx.AsyncClient, images: list[bytes]) -> None:
    r = await client.post("/v1/annotate", files={"image": images[3]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (360, 480, 3)


async def test_model_classes_health(client: httpx.AsyncClient) -> None:
    model = (await client.get("/v1/model")).json()
    assert model["backend"] == "onnx" and model["device"] == "cpu" and model["precision"] == "fp32"
    assert model["input_size"] % 32 == 0 and model["max_batch_size"] == 8
    assert model["max_wait_ms"] == 5.0 and len(model["version"]) == 12
    classes = (await client.get("/v1/classes")).json()["classes"]
    assert classes == model["classes"] and {"circle", "square", "triangle"} <= set(classes.values())
    assert (await client.get("/health/live")).status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["queue_depth"] == 0 and "inflight_batches" in ready.json()
    assert (await client.get("/openapi.json")).json()["paths"]["/v1/detect"]["post"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"files": {"image": b"garbage bytes"}}, 400, "invalid_image"),
        ({"files": {"image": b""}}, 400, "invalid_image"),
        ({"files": {"image": png((1, 1))}}, 400, "image_dimensions"),
        ({"files": {"image": png((9000, 40))}}, 400, "image_dimensions"),
        ({"json": {"image": "%%%not base64%%%"}}, 400, "invalid_image"),
        ({"json": {"image": base64.b64encode(b"garbage").decode()}}, 400, "invalid_image"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ({"content": b"hello"}, 415, "unsupported_media_type"),
        ({"files": {"image": jpeg(0)}, "data": {"conf": "2"}}, 422, "validation_error"),
        ({"files": {"image": jpeg(0)}, "data": {"conf": "abc"}}, 422, "validation_error"),
        ({"files": {"image": jpeg(0)}, "data": {"conf": "nan"}}, 422, "validation_error"),
        ({"files": {"image": jpeg(0)}, "data": {"max_det": "0"}}, 422, "validation_error"),
        ({"files": {"image": jpeg(0)}, "data": {"classes": "unicorn"}}, 422, "validation_error"),
        ({"files": {"other": jpeg(0)}}, 422, "validation_error"),
        ({"json": {"image_name": "x.jpg"}}, 422, "validation_error"),
        ({"json": {"image": 5}}, 422, "validation_error"),
        ({"json": {"image": "", "bogus": 1}}, 422, "validation_error"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422,
         "validation_error"),
    ],
)
async def test_error_rows(client: httpx.AsyncClient, kwargs: dict[str, object], status: int,
                          code: str) -> None:
    r = await client.post("/v1/detect", **kwargs)  # type: ignore[arg-type]
    _error(r, status, code)


async def test_query_parameter_out_of_range(client: httpx.AsyncClient) -> None:
    _error(await client.post("/v1/detect?iou=-1", files={"image": jpeg(0)}), 422, "validation_error")
    _error(await client.post("/v1/detect?max_det=x", files={"image": jpeg(0)}), 422,
           "validation_error")


async def test_payload_too_large(client: httpx.AsyncClient) -> None:
    big = b"\0" * (11 * 1024 * 1024)
    _error(await client.post("/v1/detect", files={"image": big}), 413, "payload_too_large")
    bomb_header = png((8192, 8192))  # exactly at the pixel limit: fine
    assert (await client.post("/v1/detect", files={"image": bomb_header})).status_code == 200


async def test_pixel_bomb_is_413() -> None:
    from tests.engine.test_decode import _png_claiming

    async with app_client(max_pixels=1000 * 1000, warmup=False) as c:
        _error(await c.post("/v1/detect", files={"image": _png_claiming(20000, 20000)}), 413,
               "payload_too_large")


async def test_deadline_exceeded_is_504(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/detect", files={"image": jpeg(4)},
                          headers={"X-Request-Timeout-Ms": "0"})
    _error(r, 504, "deadline_exceeded")


async def test_unknown_route_is_404_in_our_format(client: httpx.AsyncClient) -> None:
    _error(await client.get("/nope"), 404, "not_found")


async def test_queue_full_is_503_with_retry_after() -> None:
    async with app_client(max_queue=2, max_batch_size=1, cache_enabled=False, warmup=False) as c:
        rs = await asyncio.gather(*(c.post("/v1/detect", files={"image": jpeg(i % 8)})
                                    for i in range(24)))
        statuses = [r.status_code for r in rs]
        assert 200 in statuses and 503 in statuses
        for r in rs:
            if r.status_code == 503:
                _error(r, 503, "overloaded")
                assert int(r.headers["retry-after"]) >= 1


async def test_rate_limit_is_429_with_retry_after() -> None:
    async with app_client(rate_limit_rps=1, rate_limit_burst=2, warmup=False) as c:
        rs = [await c.post("/v1/detect", files={"image": jpeg(0)}) for _ in range(4)]
        assert [r.status_code for r in rs[:2]] == [200, 200]
        _error(rs[3], 429, "rate_limited")
        assert int(rs[3].headers["retry-after"]) >= 1


async def test_api_keys() -> None:
    async with app_client(api_keys=["s3cret", "other"], warmup=False) as c:
        _error(await c.post("/v1/detect", files={"image": jpeg(0)}), 401, "unauthorized")
        _error(await c.post("/v1/detect", files={"image": jpeg(0)},
                            headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        ok1 = await c.post("/v1/detect", files={"image": jpeg(0)},
                           headers={"Authorization": "Bearer s3cret"})
        ok2 = await c.post("/v1/detect", files={"image": jpeg(0)}, headers={"X-API-Key": "other"})
        assert ok1.status_code == ok2.status_code == 200
        assert (await c.get("/health/ready")).status_code == 200  # probes need no key


async def test_cache_and_coalescing() -> None:
    async with app_client(cache_enabled=True, warmup=False) as c:
        img = jpeg(5)
        first, second = await asyncio.gather(
            c.post("/v1/detect", files={"image": ("a.jpg", img)}),
            c.post("/v1/detect", files={"image": ("b.jpg", img)}),
        )
        third = await c.post("/v1/detect", files={"image": ("c.jpg", img)})
        flags = [r.json()["processing_metadata"]["cached"] for r in (first, second, third)]
        assert flags.count(False) == 1 and flags[2] is True
        assert first.json()["detections"] == second.json()["detections"] == third.json()["detections"]
        assert third.json()["image_name"] == "c.jpg"
        other = await c.post("/v1/detect?conf=0.5", files={"image": ("c.jpg", img)})
        assert other.json()["processing_metadata"]["cached"] is False
        metrics = (await c.get("/metrics")).text
        count = [s.value for f in text_string_to_metric_families(metrics) for s in f.samples
                 if s.name == "model_inference_total" and s.labels.get("status") == "success"]
        assert sum(count) == 2  # one computation for three identical requests, one for conf=0.5


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


async def test_metrics_after_known_requests() -> None:
    async with app_client(cache_enabled=False, warmup=False) as c:
        rs = await asyncio.gather(*(c.post("/v1/detect", files={"image": jpeg(i)}) for i in range(6)))
        assert all(r.status_code == 200 for r in rs)
        detected = sum(r.json()["detection_count"] for r in rs)
        await c.post("/v1/detect", files={"image": b"junk"})
        s = _samples((await c.get("/metrics")).text)
        batches = ("inference_batch_size_count", (("model", "demo"), ("protocols", "v1")))
        assert s[batches] >= 1
        assert s[("inference_batch_size_sum", (("model", "demo"), ("protocols", "v1")))] == 6
        assert s[("model_inference_total", (("model", "demo"), ("status", "success")))] == 6
        assert sum(v for (n, _), v in s.items() if n == "batch_dispatch_total") == s[batches]
        assert sum(v for (n, _), v in s.items() if n == "detections_total") == detected
        assert s[("inference_queue_wait_seconds_count", (("model", "demo"),))] == 6
        assert s[("inference_queue_depth", (("model", "demo"),))] == 0
        info = [k for k in s if k[0] == "model_info"]
        assert info and dict(info[0][1])["backend"] == "onnx"
        http = [v for (n, lab), v in s.items() if n == "http_requests_total"
                and dict(lab).get("handler") == "/v1/detect"]
        assert sum(http) == 7


async def test_one_json_access_line_per_request(client: httpx.AsyncClient,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from wire.logs import JsonFormatter

    with caplog.at_level(logging.INFO, logger="yoloserve.access"):
        r = await client.post("/v1/detect", files={"image": jpeg(1)}, headers={"X-Request-ID": "log-1"})
    records = [rec for rec in caplog.records if rec.name == "yoloserve.access"]
    assert len(records) == 1
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == "log-1"
    assert line["route"] == "/v1/detect" and line["status"] == 200 and line["latency_ms"] > 0
    assert line["batch_size"] >= 1 and line["detections"] == r.json()["detection_count"]

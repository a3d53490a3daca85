"""The client's methods: what they send, what they parse, and their lifecycle."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import BASE_URL, FakeTime, Script, error_payload, ok, result_payload, status

from clients import (
    AsyncDetectionClient,
    ClientOptions,
    ConnectError,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    ProtocolError,
    Unauthorized,
)
from wire.schemas import DetectionResult

MakeClient = Callable[..., AsyncDetectionClient]
PNG = b"\x89PNG\r\n\x1a\nfake"

MODEL = {
    "name": "demo",
    "version": "3f2a9c0d1e4b",
    "backend": "onnx",
    "device": "cpu",
    "precision": "fp32",
    "input_size": 640,
    "classes": {"0": "circle"},
    "max_batch_size": 8,
    "max_wait_ms": 5.0,
}


def form_of(request: httpx.Request) -> bytes:
    return request.read()


async def test_detect_sends_the_image_and_parameters(make_client: MakeClient) -> None:
    script = Script([ok("photo.png", count=2)])
    result = await make_client(script).detect(
        PNG, conf=0.3, iou=0.5, max_det=10, classes=[0, "square"], image_name="photo.png"
    )
    assert isinstance(result, DetectionResult)
    assert result.detection_count == 2 and result.detections[0].class_name == "circle"
    request = script.requests[0]
    assert (request.method, request.url.path) == ("POST", "/v1/detect")
    assert request.headers["content-type"].startswith("multipart/form-data")
    body = form_of(request)
    assert b'name="image"; filename="photo.png"' in body
    assert b"Content-Type: image/png" in body
    for field, value in [
        ("conf", b"0.3"),
        ("iou", b"0.5"),
        ("max_det", b"10"),
        ("classes", b"0,square"),
    ]:
        assert f'name="{field}"'.encode() in body and value in body
    assert "authorization" not in request.headers
    assert request.headers["user-agent"].startswith("yoloserve-client/")


async def test_unset_parameters_are_not_sent(make_client: MakeClient) -> None:
    script = Script([ok()])
    await make_client(script).detect(PNG)
    body = form_of(script.requests[0])
    assert b'name="conf"' not in body and b'name="classes"' not in body
    assert b'filename="image"' in body


async def test_api_key_and_extra_headers(make_client: MakeClient) -> None:
    script = Script([ok()])
    await make_client(script, api_key="s3cret", headers={"X-Team": "vision"}).detect(PNG)
    assert script.requests[0].headers["authorization"] == "Bearer s3cret"
    assert script.requests[0].headers["x-team"] == "vision"


async def test_detect_reads_a_path(make_client: MakeClient, tmp_path: Path) -> None:
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0fake")
    script = Script([ok()])
    await make_client(script).detect(image)
    body = form_of(script.requests[0])
    assert b'filename="cat.jpg"' in body and b"Content-Type: image/jpeg" in body
    await make_client(script).detect(str(image), image_name="other.jpg")
    assert b'filename="other.jpg"' in form_of(script.requests[1])


async def test_unreadable_path_is_an_invalid_request_without_a_request(
    make_client: MakeClient, tmp_path: Path
) -> None:
    script = Script([ok()])
    with pytest.raises(InvalidRequest) as caught:
        await make_client(script).detect(tmp_path / "missing.jpg")
    assert caught.value.code == "unreadable_image" and caught.value.status is None
    assert script.requests == []


async def test_invalid_json_answer_is_a_protocol_error(make_client: MakeClient) -> None:
    script = Script([httpx.Response(200, content=b"{not json", headers={"X-Request-ID": "r7"})])
    with pytest.raises(ProtocolError) as caught:
        await make_client(script).detect(PNG)
    assert caught.value.request_id == "r7" and "DetectionResult" in caught.value.message
    assert len(script.requests) == 1


async def test_annotate_returns_jpeg_bytes(make_client: MakeClient) -> None:
    script = Script(
        [httpx.Response(200, content=b"\xff\xd8jpeg", headers={"Content-Type": "image/jpeg"})]
    )
    assert await make_client(script).annotate(PNG, conf=0.5) == b"\xff\xd8jpeg"
    assert script.requests[0].url.path == "/v1/annotate"
    assert b'name="conf"' in form_of(script.requests[0])


async def test_detect_batch_mixes_results_and_per_item_errors(make_client: MakeClient) -> None:
    answer = {
        "results": [
            result_payload("a"),
            {"error": {"code": "invalid_image", "message": "not an image", "request_id": "b1"}},
            result_payload("c"),
        ]
    }
    script = Script([httpx.Response(200, json=answer)])
    results = await make_client(script).detect_batch([PNG, b"junk", PNG], conf=0.4)
    assert isinstance(results[0], DetectionResult) and isinstance(results[2], DetectionResult)
    assert isinstance(results[1], InvalidRequest) and results[1].code == "invalid_image"
    assert results[1].request_id == "b1"
    body = form_of(script.requests[0])
    assert script.requests[0].url.path == "/v1/detect/batch"
    assert body.count(b'name="images"') == 3 and b'name="conf"' in body


async def test_detect_batch_checks_the_count(make_client: MakeClient) -> None:
    script = Script([httpx.Response(200, json={"results": [result_payload()]})])
    with pytest.raises(ProtocolError, match="2 images sent, 1 results"):
        await make_client(script).detect_batch([PNG, PNG])
    assert await make_client(script).detect_batch([]) == []


async def test_detect_batch_is_retried_as_a_whole(make_client: MakeClient) -> None:
    script = Script([status(503), httpx.Response(200, json={"results": [result_payload()]})])
    assert len(await make_client(script).detect_batch([PNG])) == 1
    assert len(script.requests) == 2


async def test_model_info(make_client: MakeClient) -> None:
    script = Script([status(502), httpx.Response(200, json=MODEL)])
    info = await make_client(script).model_info()
    assert info.input_size == 640 and info.classes == {"0": "circle"}
    assert [(r.method, r.url.path) for r in script.requests] == [("GET", "/v1/model")] * 2


@pytest.mark.parametrize(
    ("answer", "state"),
    [
        (httpx.Response(200, json={"status": "ready", "queue_depth": 3, "gpu": "h100"}), "ready"),
        (
            httpx.Response(503, json={"status": "starting"}, headers={"Retry-After": "1"}),
            "starting",
        ),
    ],
)
async def test_health_reports_the_state(
    make_client: MakeClient, answer: httpx.Response, state: str
) -> None:
    script = Script([answer])
    health = await make_client(script).health()
    assert health.status == state
    assert len(script.requests) == 1  # a probe: never retried
    assert script.requests[0].url.path == "/health/ready"


async def test_health_extra_fields(make_client: MakeClient) -> None:
    answer = httpx.Response(200, json={"status": "ready", "queue_depth": 3, "gpu": "h100"})
    health = await make_client(Script([answer])).health()
    assert health.queue_depth == 3 and health.extra() == {"gpu": "h100"}


async def test_health_errors(make_client: MakeClient) -> None:
    lb_error = httpx.Response(503, content=error_payload("overloaded"))
    with pytest.raises(Overloaded):
        await make_client(Script([lb_error])).health()
    with pytest.raises(ProtocolError):
        await make_client(Script([httpx.Response(200, text="OK")])).health()
    with pytest.raises(InvalidRequest):
        await make_client(Script([httpx.Response(404)])).health()
    with pytest.raises(ConnectError):
        await make_client(Script([httpx.ConnectError("refused")])).health()


async def test_wait_until_ready_polls_until_ready(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    script = Script(
        [
            httpx.ConnectError("refused"),
            httpx.Response(503, json={"status": "starting"}),
            httpx.Response(503, json={"status": "starting"}),
            httpx.Response(200, json={"status": "ready"}),
        ]
    )
    health = await make_client(script, jitter=lambda: 1.0).wait_until_ready(timeout=30)
    assert health.status == "ready"
    assert fake_time.sleeps == pytest.approx([0.05, 0.1, 0.2])


async def test_wait_until_ready_gives_up_after_timeout(
    make_client: MakeClient, fake_time: FakeTime
) -> None:
    script = Script([httpx.Response(503, json={"status": "starting"})])
    with pytest.raises(DeadlineExceeded, match="not ready after 5s: status 'starting'"):
        await make_client(script).wait_until_ready(timeout=5)
    assert sum(fake_time.sleeps) == pytest.approx(5.0)
    assert max(fake_time.sleeps) <= 1.0


async def test_wait_until_ready_raises_misuse_at_once(make_client: MakeClient) -> None:
    script = Script([httpx.Response(401, content=error_payload("unauthorized"))])
    with pytest.raises(Unauthorized):
        await make_client(script).wait_until_ready(timeout=5)
    assert len(script.requests) == 1


async def test_lifecycle(make_client: MakeClient) -> None:
    script = Script([ok()])
    async with make_client(script) as client:
        await client.detect(PNG)
        assert client.base_url.startswith(BASE_URL)
        assert repr(client) == f"AsyncDetectionClient('{BASE_URL}', open)"
    assert repr(client).endswith("closed)")
    await client.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await client.detect(PNG)
    with pytest.raises(RuntimeError, match="closed"):
        await client.model_info()
    with pytest.raises(RuntimeError, match="closed"):
        async with client:
            pass


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="timeout"):
        AsyncDetectionClient("http://x", timeout=0)
    with pytest.raises(ValueError, match="max_attempts"):
        AsyncDetectionClient("http://x", max_attempts=0)


def test_client_options_match_the_constructor() -> None:
    parameters = inspect.signature(AsyncDetectionClient.__init__).parameters.values()
    keyword_only = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert keyword_only == set(ClientOptions.__annotations__)

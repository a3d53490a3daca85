"""``AsyncGrpcDetectionClient`` against a real service process with ``--grpc-port``: the same
answers as the HTTP client (every task), the same exceptions, and retries across a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from clients import (
    AsyncDetectionClient,
    AsyncGrpcDetectionClient,
    ClientError,
    ConnectError,
    InvalidRequest,
)
from harness.procs import free_port
from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.slow
pytest.importorskip("grpc")

MODELS = ("demo", "seg", "pose", "obb")
ENV = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}


def _service(grpc_port: int) -> ServiceProcess:
    return ServiceProcess("--model", "demo=models/demo.onnx", "--model", "seg=models/demo-seg.onnx",
                          "--model", "pose=models/demo-pose.onnx",
                          "--model", "obb=models/demo-obb.onnx", "--grpc-port", str(grpc_port),
                          env=ENV)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServiceProcess, int]]:
    port = free_port()
    with _service(port) as proc:
        yield proc, port


@pytest.mark.parametrize("model", MODELS)
async def test_detect_over_grpc_equals_detect_over_http(
        served: tuple[ServiceProcess, int], model: str) -> None:
    proc, port = served
    async with AsyncDetectionClient(proc.url, model=model) as http, \
            AsyncGrpcDetectionClient(f"grpc://127.0.0.1:{port}/{model}") as grpc:
        for index in range(2):
            image = jpeg(index)
            over_http = await http.detect(image, conf=0.1, max_det=50, image_name="i.jpg",
                                          mask_format="rle" if model == "seg" else None)
            over_grpc = await grpc.detect(image, conf=0.1, max_det=50, image_name="i.jpg")
            assert over_grpc.detection_count > 0
            assert over_grpc.model_dump(exclude={"processing_metadata"}) == over_http.model_dump(
                exclude={"processing_metadata"})
            meta = over_grpc.processing_metadata
            assert (meta.model_name, meta.confidence_threshold, meta.iou_threshold) == (
                model, 0.1, over_http.processing_metadata.iou_threshold)


async def test_batch_and_classes_as_over_http(served: tuple[ServiceProcess, int]) -> None:
    proc, port = served
    images = [jpeg(0), b"not an image", jpeg(1)]
    async with AsyncDetectionClient(proc.url) as http, \
            AsyncGrpcDetectionClient(f"127.0.0.1:{port}", model="demo") as grpc:
        over_http = await http.detect_batch(images, classes=["circle", 1])
        over_grpc = await grpc.detect_batch(images, classes=["circle", 1])
        whole = await grpc.detect_batch([jpeg(2), jpeg(3)])
        health = await grpc.wait_until_ready(timeout=5)
    assert [type(r) for r in over_grpc] == [type(r) for r in over_http]
    for a, b in zip(over_http, over_grpc, strict=True):
        if isinstance(a, ClientError):
            assert isinstance(b, InvalidRequest) and (a.code, a.status) == (b.code, b.status)
        else:
            assert not isinstance(b, ClientError)
            assert [d.model_dump() for d in a.detections] == [d.model_dump() for d in b.detections]
            assert {d.class_id for d in b.detections} <= {0, 1}
    assert len(whole) == 2 and all(not isinstance(r, ClientError) for r in whole)
    assert health.status == "ready"


@pytest.mark.parametrize(("model", "image", "code", "status"), [
    ("nope", jpeg(0), "model_not_found", 404),
    ("demo", b"not an image", "invalid_image", 400),
])
async def test_errors_are_the_http_clients(served: tuple[ServiceProcess, int], model: str,
                                           image: bytes, code: str, status: int) -> None:
    proc, port = served
    caught: list[ClientError] = []
    async with AsyncDetectionClient(proc.url) as http, \
            AsyncGrpcDetectionClient(f"127.0.0.1:{port}") as grpc:
        for client in (http, grpc):
            with pytest.raises(ClientError) as info:
                await client.detect(image, model=model)
            caught.append(info.value)
    over_http, over_grpc = caught
    assert type(over_grpc) is type(over_http) is InvalidRequest
    assert (over_grpc.code, over_grpc.status) == (over_http.code, over_http.status) == (code, status)
    assert over_grpc.attempt == 1  # never retried


async def test_local_misuse_is_refused_before_sending(served: tuple[ServiceProcess, int]) -> None:
    _, port = served
    async with AsyncGrpcDetectionClient(f"127.0.0.1:{port}") as grpc:
        with pytest.raises(InvalidRequest, match="names the model"):
            await grpc.detect(jpeg(0))
        with pytest.raises(InvalidRequest, match="not a classifier"):
            await grpc.classify(jpeg(0), model="demo")
        with pytest.raises(InvalidRequest, match="RLE"):
            await grpc.detect(jpeg(0), model="seg", mask_format="polygons")
    with pytest.raises(RuntimeError, match="closed"):
        await grpc.detect(jpeg(0), model="demo")


async def test_unavailable_is_retried_until_the_service_is_back() -> None:
    """The call's first try finds no server (UNAVAILABLE); the backoff after it starts the service
    and waits until it is ready; a later try of the same call answers."""
    port = free_port()
    proc = _service(port)
    slept: list[float] = []

    async def restart_then_sleep(seconds: float) -> None:
        slept.append(seconds)
        if not proc.running():
            await asyncio.to_thread(proc.start, True)
        await asyncio.sleep(seconds)  # the backoff itself, as in use

    try:
        async with AsyncGrpcDetectionClient(f"127.0.0.1:{port}", model="demo", timeout=120,
                                            sleep=restart_then_sleep) as grpc:
            with pytest.raises(ConnectError) as refused:
                await grpc.health()  # one try, no retry: nothing listens yet
            assert refused.value.retryable
            result = await grpc.detect(jpeg(0))
            assert result.detection_count > 0 and slept, slept
            assert grpc.retry_budget.tokens < grpc.retry_budget.max_tokens  # one failure counted
    finally:
        proc.stop()

"""``AsyncGrpcDetectionClient`` and ``GrpcDetectionClient`` as true siblings of the HTTP clients,
against a real service process with ``--grpc-port``: ``model_info`` and ``list_models`` (from
``ModelConfig`` and ``RepositoryIndex``) equal to ``/v1/model(s)``, ``annotate`` and ``track``
through ``http_url`` equal to the HTTP client's, the blocking twin, and ``yoloserve detect --url
grpc://...``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from click.testing import CliRunner

from clients import (
    AsyncDetectionClient,
    AsyncGrpcDetectionClient,
    DetectionClient,
    GrpcDetectionClient,
    InvalidRequest,
    ItemResult,
)
from clients.cli import detect_command, track_command
from harness.procs import free_port
from tests.service.conftest import jpeg
from tests.support.procs import ServiceProcess
from wire.schemas import StreamResult

pytestmark = pytest.mark.slow
pytest.importorskip("grpc")

ENV = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_ACCESS_LOG": "false"}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServiceProcess, int]]:
    port = free_port()
    with ServiceProcess("--model", "demo=models/demo.onnx", "--model", "seg=models/demo-seg.onnx",
                        "--model-alias", "prod=demo:3,seg:1", "--max-wait-ms", "4.35",
                        "--grpc-port", str(port), env=ENV) as proc:
        yield proc, port


async def test_model_info_and_list_models_equal_http(served: tuple[ServiceProcess, int]) -> None:
    proc, port = served
    async with AsyncDetectionClient(proc.url) as http, \
            AsyncGrpcDetectionClient(f"127.0.0.1:{port}") as grpc:
        listing = await grpc.list_models()
        assert listing == await http.list_models()
        assert [m.name for m in listing.models] == ["demo", "seg"]  # not demo-raw, seg-raw
        assert (listing.default, listing.aliases) == ("demo", {"prod": {"demo": 3.0, "seg": 1.0}})
        assert listing.models[0].max_wait_ms == 4.35
        assert listing.models[0].evaluation is not None  # models/demo.evaluation.json
        for model in (None, "demo", "seg"):
            assert await grpc.model_info(model=model) == await http.model_info(model=model)
        with pytest.raises(InvalidRequest) as missing:
            await grpc.model_info(model="nope", timeout=5)
        assert (missing.value.code, missing.value.status) == ("model_not_found", 404)
    async with AsyncGrpcDetectionClient(f"grpc://127.0.0.1:{port}/seg") as grpc:
        assert (await grpc.model_info()).name == "seg"  # the client's model, as over HTTP


async def test_annotate_and_track_go_over_http_url(served: tuple[ServiceProcess, int]) -> None:
    proc, port = served
    frames = [jpeg(i) for i in range(3)]
    async with AsyncDetectionClient(proc.url) as http, \
            AsyncGrpcDetectionClient(f"127.0.0.1:{port}", model="demo", http_url=proc.url) as grpc:
        assert grpc.http_url is not None and grpc.http_url.startswith(proc.url)
        over_grpc = await grpc.annotate(jpeg(0), conf=0.2)
        assert over_grpc[:2] == b"\xff\xd8"  # a JPEG
        assert over_grpc == await http.annotate(jpeg(0), conf=0.2)
        tracked = [r async for r in grpc.track("sibling-grpc", frames, conf=0.2)]
        expected = [r async for r in http.track("sibling-http", frames, conf=0.2)]
        with pytest.raises(InvalidRequest) as bad:
            await grpc.annotate(b"not an image")
        assert (bad.value.code, bad.value.status) == ("invalid_image", 400)
        # one retry budget for both transports
        assert grpc._http is not None and grpc._http.retry_budget is grpc.retry_budget
    assert [r.stream.seq for r in tracked] == [0, 1, 2]
    assert all(isinstance(r, StreamResult) for r in tracked)

    def comparable(result: StreamResult) -> object:
        return result.model_dump(exclude={"image_name", "processing_metadata", "stream"})

    assert [comparable(r) for r in tracked] == [comparable(r) for r in expected]
    assert sum(r.detection_count for r in tracked) > 0


def test_the_blocking_twin(served: tuple[ServiceProcess, int]) -> None:
    proc, port = served
    images = [jpeg(0), jpeg(1)]
    with DetectionClient(proc.url, model="demo") as http, \
            GrpcDetectionClient(f"grpc://127.0.0.1:{port}/demo", http_url=proc.url) as grpc:
        assert grpc.target == f"127.0.0.1:{port}"
        assert grpc.wait_until_ready(timeout=30).status == "ready"
        assert grpc.health().status == "ready"
        assert grpc.model_info() == http.model_info()
        assert grpc.list_models() == http.list_models()
        one = grpc.detect(images[0], image_name="a.jpg")
        assert one.detections == http.detect(images[0], image_name="a.jpg").detections
        batch = grpc.detect_batch(images)
        assert [r.detection_count for r in batch if not isinstance(r, Exception)] == [
            r.detection_count for r in http.detect_batch(images) if not isinstance(r, Exception)]
        with closing(grpc.detect_many(images, concurrency=2, ordered=True)) as outcomes:
            many = list(outcomes)
        assert all(isinstance(o, ItemResult) for o in many) and len(many) == 2
        assert grpc.annotate(images[0]) == http.annotate(images[0])
        assert [r.stream.seq for r in grpc.track("sibling-sync", images)] == [0, 1]
        assert grpc.async_client.retry_budget is grpc.async_client.policy.budget
    with pytest.raises(RuntimeError, match="closed"):
        grpc.detect(images[0])


def test_the_detect_command_over_grpc(served: tuple[ServiceProcess, int], tmp_path: Path) -> None:
    proc, port = served
    for i in range(2):
        (tmp_path / f"i{i}.jpg").write_bytes(jpeg(i))
    runner = CliRunner()
    over_grpc = runner.invoke(detect_command, [str(tmp_path), "--url", f"grpc://127.0.0.1:{port}/demo",
                                               "--ordered", "--no-progress"])
    over_http = runner.invoke(detect_command, [str(tmp_path), "--url", proc.url, "--ordered",
                                               "--no-progress"])
    assert over_grpc.exit_code == over_http.exit_code == 0, over_grpc.stderr

    def boxes(stdout: str) -> list[object]:
        return [json.loads(line)["detections"] for line in stdout.splitlines()]

    assert boxes(over_grpc.stdout) == boxes(over_http.stdout) and len(boxes(over_grpc.stdout)) == 2
    nameless = runner.invoke(detect_command, [str(tmp_path), "--url", f"grpc://127.0.0.1:{port}"])
    assert nameless.exit_code == 2 and "--model NAME" in nameless.stderr
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    tracked = runner.invoke(track_command, [str(video), "--url", f"grpc://127.0.0.1:{port}"])
    assert tracked.exit_code == 2 and "HTTP address" in tracked.stderr

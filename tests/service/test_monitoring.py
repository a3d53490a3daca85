"""Model monitoring: a class's drift score rises past the threshold within one window of images of
that class only after a mixed baseline, the warning is logged once, and the baseline comes from the
first images or from a file written by ``yoloserve monitor baseline``."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from service.demo.synthetic import CLASSES, make_sample
from service.runtime.monitoring import Baseline, psi
from tests.service.conftest import app_client
from yoloserve.cli import main

WINDOW = 32
THRESHOLD = 0.5
CIRCLE = CLASSES.index("circle")


def _jpeg(seed: int, index: int, only: int | None = None) -> bytes:
    ok, buf = cv2.imencode(".jpg", make_sample(seed, index, only).image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _mixed(count: int) -> list[bytes]:
    return [_jpeg(11, i) for i in range(count)]


def _circles(count: int, start: int = 0) -> list[bytes]:
    return [_jpeg(12, i, only=CIRCLE) for i in range(start, start + count)]


async def _send(client: httpx.AsyncClient, images: list[bytes]) -> None:
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    response = await client.post("/v1/detect/batch", files=files)
    assert response.status_code == 200, response.text
    assert all("error" not in item for item in response.json()["results"])


async def _drift(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    samples = [s for family in text_string_to_metric_families(text)
               if family.name == "model_drift_score" for s in family.samples]
    assert all(s.labels["model"] for s in samples)  # each served model has its own series
    return {s.labels["class_name"]: s.value for s in samples}


def _warnings(caplog: pytest.LogCaptureFixture, class_name: str) -> int:
    return sum(1 for r in caplog.records if r.name == "yoloserve.monitoring"
               and r.levelno == logging.WARNING and getattr(r, "class_name", None) == class_name)


def test_psi_is_zero_for_equal_shapes_and_grows_with_the_shift() -> None:
    assert psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    assert psi([100, 200, 300], [10, 20, 30]) < 0.01  # the sample size alone is no drift
    small, large = psi([50, 50, 0], [45, 55, 0]), psi([50, 50, 0], [5, 45, 50])
    assert 0 < small < 0.05 < 1 < large
    assert psi([0, 0], [1, 2]) == 0.0


async def _one_class_after_baseline(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    """One window of circles only: circle's score passes the threshold, logged once; the next
    half window adds no second warning."""
    await _send(client, _circles(WINDOW))
    scores = await _drift(client)
    assert scores["circle"] > THRESHOLD, scores
    assert _warnings(caplog, "circle") == 1
    await _send(client, _circles(WINDOW // 2, start=WINDOW))
    assert _warnings(caplog, "circle") == 1
    page = (await client.get("/v1/monitoring")).json()
    assert page["state"] == "scoring"
    circle = next(c for c in page["classes"] if c["class_name"] == "circle")
    assert circle["score"] > THRESHOLD
    assert circle["window"]["rate"] > circle["baseline"]["rate"]


@pytest.mark.slow
async def test_a_captured_mixed_baseline_then_one_class_drifts_within_one_window(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="yoloserve.monitoring")
    async with app_client(cache_enabled=False, monitor_baseline_images=WINDOW, monitor_window=WINDOW,
                          monitor_min_window=WINDOW, drift_threshold=THRESHOLD) as client:
        await _send(client, _mixed(WINDOW))
        assert (await client.get("/v1/monitoring")).json()["state"] == "filling_window"
        assert await _drift(client) == {}  # nothing scored before the window is full
        await _one_class_after_baseline(client, caplog)


@pytest.mark.slow
async def test_a_baseline_file_from_the_cli_is_used_from_the_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="yoloserve.monitoring")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, data in enumerate(_mixed(WINDOW)):
        (folder / f"{i:03d}.jpg").write_bytes(data)
    out = tmp_path / "baseline.json"
    done = CliRunner().invoke(main, ["monitor", "baseline", str(folder), "--out", str(out),
                                     "--model", "models/demo.onnx"])
    assert done.exit_code == 0, done.output
    baseline = Baseline.load(out)
    assert baseline.images == WINDOW
    assert baseline.histograms[CIRCLE].detections_per_image() > 0
    async with app_client(cache_enabled=False, monitor_baseline=out, monitor_window=WINDOW,
                          monitor_min_window=WINDOW, drift_threshold=THRESHOLD) as client:
        page = (await client.get("/v1/monitoring")).json()
        assert page["state"] == "filling_window"
        assert page["baseline_source"] == str(out)
        await _one_class_after_baseline(client, caplog)


async def test_requests_with_a_class_filter_or_a_higher_threshold_are_not_counted() -> None:
    async with app_client(cache_enabled=False, monitor_baseline_images=10) as client:
        files = {"image": ("a.jpg", _jpeg(11, 0), "image/jpeg")}
        for query in ({"conf": "0.6"}, {"classes": "circle"}):
            response = await client.post("/v1/detect", params=query, files=files)
            assert response.status_code == 200
        assert (await client.get("/v1/monitoring")).json()["baseline_images"] == 0
        assert (await client.post("/v1/detect", params={"conf": "0.1"}, files=files)).status_code == 200
        assert (await client.get("/v1/monitoring")).json()["baseline_images"] == 1

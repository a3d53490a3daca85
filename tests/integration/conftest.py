"""Two real services, ``a`` and ``b``, started once for the package on a copy of the demo model,
and the reference result of every test image from a direct single request to ``a``.

The tests that kill ``b`` start it again before they end (``fleet.ensure_ready``), so each test
finds both running whatever ran before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import DetectionClient
from tests.integration.stack import Fleet, LBProc, snapshot_models, start_lb, write_images
from wire.schemas import DetectionResult

DISTINCT_IMAGES = 50


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory, demo_pt: Path) -> Iterator[Fleet]:
    model = snapshot_models(demo_pt.parent, tmp_path_factory.mktemp("models"))
    fleet = Fleet(model, tmp_path_factory.mktemp("service-logs"))
    try:
        fleet.start("a", "b")
        yield fleet
    finally:
        fleet.stop_all()


@pytest.fixture(scope="package")
def image_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """50 distinct small JPEGs."""
    return write_images(tmp_path_factory.mktemp("images"), DISTINCT_IMAGES)


@pytest.fixture(scope="package")
def reference(fleet: Fleet, image_paths: list[Path]) -> dict[bytes, DetectionResult]:
    """Each image's result from one request at a time straight to service ``a`` (no balancer, a
    batch of one), keyed by the image's bytes."""
    found: dict[bytes, DetectionResult] = {}
    with DetectionClient(fleet.url("a"), timeout=60.0) as client:
        for path in image_paths:
            found[path.read_bytes()] = client.detect(path)
    # not vacuous: the model finds something in these images (whichever model it is)
    assert sum(r.detection_count for r in found.values()) > 0, "no detections in any test image"
    return found


@pytest.fixture(scope="package")
def lb_pair(fleet: Fleet) -> Iterator[LBProc]:
    """The real balancer, default settings, in front of ``a`` and ``b``."""
    lb = start_lb(fleet.url("a"), fleet.url("b"))
    try:
        yield lb
    finally:
        lb.stop()

"""The detect command's parts: walking paths, JSON lines, percentiles."""

from __future__ import annotations

import json
import math
from array import array
from pathlib import Path

from conftest import result_payload

from clients import InvalidRequest, ItemError, ItemResult
from clients._paths import count_images, iter_image_paths, missing_paths
from clients._report import RunStats, json_line, percentile
from wire.schemas import DetectionResult


def touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_walk_order_filters_and_globs(tmp_path: Path) -> None:
    touch(
        tmp_path / "b.jpg",
        tmp_path / "a.PNG",
        tmp_path / "c.txt",
        tmp_path / ".d.jpg",
        tmp_path / "sub" / "e.webp",
        tmp_path / ".git" / "f.jpg",
        tmp_path / "z" / "g.tiff",
    )
    names = [p.relative_to(tmp_path).as_posix() for p in iter_image_paths([str(tmp_path)])]
    assert names == ["a.PNG", "b.jpg", "sub/e.webp", "z/g.tiff"]
    assert count_images([str(tmp_path)]) == 4
    globbed = [p.name for p in iter_image_paths([str(tmp_path / "*")])]
    assert globbed == ["a.PNG", "b.jpg", "e.webp", "g.tiff"]  # c.txt dropped, folders walked
    assert [p.name for p in iter_image_paths([str(tmp_path / "c.txt")])] == ["c.txt"]


def test_missing_paths(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    specs = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), str(tmp_path / "*.png")]
    assert missing_paths(specs) == [str(tmp_path / "b.jpg")]
    assert list(iter_image_paths([str(tmp_path / "*.png")])) == []
    assert list(iter_image_paths([str(tmp_path / "gone.jpg")])) == []  # vanished since checked


def test_json_lines() -> None:
    result = DetectionResult.model_validate(result_payload("a.jpg"))
    line = json.loads(json_line(ItemResult(0, Path("x/a.jpg"), result, 0.01)))
    assert line["path"] == "x/a.jpg" and line["detection_count"] == 1
    assert next(iter(line)) == "path"
    error = InvalidRequest("bad", status=400, code="invalid_image", request_id="r")
    assert json.loads(json_line(ItemError(1, "é.jpg", error, 0.01))) == {
        "path": "é.jpg",
        "error": {"code": "invalid_image", "message": "bad", "status": 400, "request_id": "r"},
    }


def test_percentiles_and_summary() -> None:
    values = array("d", [float(v) for v in range(1, 101)])
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95
    assert percentile(values, 0) == 1 and percentile(values, 100) == 100
    assert math.isnan(percentile(array("d"), 50))
    stats = RunStats()
    assert "images: 0" in stats.summary() and "0.0 images/s" in stats.summary()

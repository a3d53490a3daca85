"""Acceptance: ``yoloserve detect FOLDER --url LB --out FILE.jsonl`` against the real balancer and
services writes one correct JSON line per image and a summary on stderr; a corrupt file costs
exactly its own line, as an error line, and the exit status is 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.stack import LBProc, differences, small_jpeg, write_images
from tests.support.procs import ROOT
from wire.schemas import DetectionResult

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IMAGES = 200


def _detect(folder: Path, url: str, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "yoloserve", "detect", str(folder), "--url", url,
           "--out", str(out), "--concurrency", "32"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOLOSERVE_")}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def _lines(out: Path) -> dict[str, dict[str, Any]]:
    """The output's lines by path (each path once)."""
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_path = {record["path"]: record for record in records}
    assert len(by_path) == len(records), "a path was written twice"
    return by_path


def _check_result(record: dict[str, Any], reference: dict[bytes, DetectionResult]) -> None:
    path = Path(record["path"])
    result = DetectionResult.model_validate({k: v for k, v in record.items() if k != "path"})
    assert result.image_name == path.name
    assert differences(result, reference[path.read_bytes()]) == [], path


def test_folder_of_200_images_writes_200_correct_lines_and_a_summary(
    lb_pair: LBProc, reference: dict[bytes, DetectionResult], tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "images", IMAGES, distinct=len(reference))
    out = tmp_path / "results.jsonl"
    started = time.monotonic()
    run = _detect(tmp_path / "images", lb_pair.url, out)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    records = _lines(out)
    assert set(records) == {str(p) for p in paths}
    for record in records.values():
        assert "error" not in record, record
        _check_result(record, reference)
    assert "images: 200" in run.stderr and "failures: 0" in run.stderr, run.stderr
    print(f"\nCLI: 200 images in {elapsed:.1f}s; summary: {run.stderr.strip()}")


def test_one_corrupt_file_writes_199_results_one_error_line_and_exits_1(
    lb_pair: LBProc, reference: dict[bytes, DetectionResult], tmp_path: Path
) -> None:
    paths = write_images(tmp_path / "images", IMAGES, distinct=len(reference))
    corrupt = paths[117]
    corrupt.write_bytes(small_jpeg(3)[:300])  # a JPEG cut off after its first 300 bytes
    out = tmp_path / "results.jsonl"
    run = _detect(tmp_path / "images", lb_pair.url, out)
    assert run.returncode == 1, run.stderr
    records = _lines(out)
    assert set(records) == {str(p) for p in paths}
    errors = {path: record for path, record in records.items() if "error" in record}
    assert list(errors) == [str(corrupt)], errors
    error = errors[str(corrupt)]["error"]
    assert (error["status"], error["code"]) == (400, "invalid_image"), error
    assert error["message"] and error["request_id"]
    for path, record in records.items():
        if path != str(corrupt):
            _check_result(record, reference)
    assert "images: 200" in run.stderr and "failures: 1" in run.stderr, run.stderr

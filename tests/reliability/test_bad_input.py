"""The hostile-input corpus against a real service process: every case gets the contract's status
and error code, the service stays ready throughout, its memory stays flat over 20 passes, and its
file descriptors return to their baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.conftest import pid_of
from tests.reliability.loadtools import rss_mb
from tests.reliability.rawhttp import RawResponse, request
from tests.support.procs import ROOT, ServiceProcess

pytestmark = pytest.mark.slow

PASSES = 20
MAX_RSS_GROWTH = 1.05  # RSS after pass 20 within 5 % of RSS after pass 1


def load_manifest(corpus: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads((corpus / "manifest.json").read_text())
    return cases


def leaks_internals(text: str) -> bool:
    """A stack trace, a source file or a path of this checkout in an answer."""
    return any(s in text for s in ("Traceback", 'File "', ".py", str(ROOT), "site-packages"))


def problem(case: dict[str, Any], r: RawResponse) -> str | None:
    """What is wrong with the answer to ``case``, or None."""
    name, body = case["name"], r.body.decode("utf-8", "replace")
    if r.status != case["status"]:
        return f"{name}: status {r.status}, expected {case['status']}: {body[:200]}"
    if r.headers.get("content-type", "").split(";")[0] != "application/json":
        return f"{name}: content type {r.headers.get('content-type')}"
    payload = r.json()
    if case["code"] is None:
        dims = payload["image_dimensions"]
        if [dims["width"], dims["height"]] != case["dimensions"]:
            return f"{name}: dimensions {dims}, expected {case['dimensions']}"
        if payload["detection_count"] != len(payload["detections"]):
            return f"{name}: detection_count does not match the detections"
        return None
    if set(payload) != {"error"} or set(payload["error"]) != {"code", "message", "request_id"}:
        return f"{name}: not the contract's error body: {body[:200]}"
    if payload["error"]["code"] != case["code"]:
        return f"{name}: code {payload['error']['code']}, expected {case['code']}"
    if payload["error"]["request_id"] != r.headers.get("x-request-id"):
        return f"{name}: the body's request_id is not the X-Request-ID header"
    if leaks_internals(body):
        return f"{name}: the error body shows internals: {body[:300]}"
    return None


async def replay(port: int, corpus: Path, cases: list[dict[str, Any]],
                 check_ready: bool) -> list[str]:
    problems = []
    for case in cases:
        data = (corpus / case["body_file"]).read_bytes()
        r = await request(port, case["method"], case["path"], case["headers"], data, within=60)
        found = problem(case, r)
        if found:
            problems.append(found)
        if check_ready:
            ready = await request(port, "GET", "/health/ready")
            if ready.status != 200:
                problems.append(f"after {case['name']}: /health/ready answered {ready.status}")
    return problems


def test_corpus_is_generated_with_enough_cases(corpus_dir: Path) -> None:
    cases = load_manifest(corpus_dir)
    assert len(cases) >= 40
    names = {c["name"] for c in cases}
    for required in ("zero_byte_file", "text_named_jpg", "truncated_jpeg_half", "truncated_png",
                     "png_claims_50000x50000", "png_1x1", "png_10000x10", "png_16bit_rgb",
                     "jpeg_cmyk", "png_palette", "gif_animated_first_frame",
                     "tiff_multipage_first_page", "svg", "json_wrong_base64",
                     "json_base64_of_garbage", "json_image_wrong_type", "json_missing_image",
                     "json_unknown_field", "huge_field_name", "many_parts",
                     "part_without_filename", "conf_negative_query", "conf_nan_query",
                     "empty_body_no_content_type", "multipart_empty_body", "json_empty_body"):
        assert required in names, required
    for case in cases:
        assert (corpus_dir / case["body_file"]).is_file()
    # the valid-but-unusual images are served
    assert {c["name"] for c in cases if c["status"] == 200} >= {
        "png_16bit_grey", "jpeg_cmyk", "png_palette", "gif_animated_first_frame",
        "tiff_multipage_first_page"}


async def test_corpus_answers_ready_and_flat_memory(served: ServiceProcess, corpus_dir: Path,
                                                    fd_guard: int) -> None:
    cases = load_manifest(corpus_dir)
    problems = await replay(served.port, corpus_dir, cases, check_ready=True)
    assert not problems, "\n".join(problems)
    pid = pid_of(served)
    after_first = rss_mb(pid)
    for n in range(2, PASSES + 1):
        problems = await replay(served.port, corpus_dir, cases, check_ready=False)
        assert not problems, f"pass {n}:\n" + "\n".join(problems)
        assert (await request(served.port, "GET", "/health/ready")).status == 200, f"pass {n}"
    after_last = rss_mb(pid)
    print(f"{len(cases)} cases x {PASSES}: RSS {after_first:.1f} MiB after pass 1, "
          f"{after_last:.1f} MiB after pass {PASSES}")
    assert after_last <= after_first * MAX_RSS_GROWTH, (
        f"RSS grew from {after_first:.1f} MiB after pass 1 to {after_last:.1f} MiB after pass "
        f"{PASSES} (+{(after_last / after_first - 1) * 100:.1f} %)")

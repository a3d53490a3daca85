"""``yoloserve track`` against a small real HTTP server on loopback: lines per frame, the
annotated video, folders of frames, options, and the message without OpenCV. (Through the real
service and the balancer: tests/integration/test_streams_lb.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fake_detect_service import serve

from clients.cli import track_command

cv2 = pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve() as base_url:
        yield base_url


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.demo.clips import make_clip, write_video

    folder = tmp_path_factory.mktemp("clip")
    return write_video(make_clip(5, frames=12, width=160, height=128), folder / "clip.mp4")


def run(*args: str) -> Result:
    return CliRunner().invoke(track_command, list(args), catch_exceptions=False)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def test_a_video_gives_a_line_per_frame_and_an_annotated_video(
    url: str, clip: Path, tmp_path: Path
) -> None:
    out, annotated = tmp_path / "results.jsonl", tmp_path / "annotated.mp4"
    result = run(str(clip), "--url", url, "--out", str(out), "--annotate", str(annotated),
                 "--stream-id", "cam-cli", "--tracker", "botsort", "--no-progress")
    assert result.exit_code == 0, result.output
    records = lines(out.read_text())
    assert [r["frame"] for r in records] == list(range(12))
    assert [r["stream"]["seq"] for r in records] == list(range(12))
    assert {r["stream"]["id"] for r in records} == {"cam-cli"}
    assert records[0]["detections"][0]["track_id"] == 1
    assert frame_count(annotated) == 12
    assert "frames: 12" in result.stderr and "stream: cam-cli" in result.stderr


def test_a_folder_of_frames_and_a_fresh_stream_id_each_run(url: str, tmp_path: Path) -> None:
    from service.demo.clips import make_clip, write_frames

    frames = write_frames(make_clip(6, frames=4, width=96, height=96), tmp_path / "frames")
    first, second = run(str(frames[0].parent), "--url", url), run(str(frames[0].parent), "--url", url)
    assert first.exit_code == second.exit_code == 0, first.output + second.output
    a, b = lines(first.stdout), lines(second.stdout)
    assert [r["path"] for r in a] == [str(p) for p in frames]
    assert a[0]["stream"]["id"] != b[0]["stream"]["id"]  # a rerun is not a stale stream


def test_a_stale_stream_fails_with_an_error_line(url: str, clip: Path) -> None:
    assert run(str(clip), "--url", url, "--stream-id", "cam-twice").exit_code == 0
    again = run(str(clip), "--url", url, "--stream-id", "cam-twice")
    assert again.exit_code == 1
    records = lines(again.stdout)
    assert records == [{"frame": 0, "error": records[0]["error"]}]
    assert records[0]["error"]["code"] == "stale_frame"


def test_bad_arguments(url: str, tmp_path: Path) -> None:
    assert run(str(tmp_path / "nope.mp4"), "--url", url).exit_code == 2
    assert run(str(tmp_path), "--url", url, "--stream-id", "a/b").exit_code == 2
    assert run(str(tmp_path), "--url", url).exit_code == 2  # no frames in an empty folder


def test_without_opencv_a_video_is_refused_with_a_clear_message(clip: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['cv2'] = None\n"
        "from yoloserve.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "track", str(clip), "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 1
    assert "needs OpenCV" in done.stderr and "pip install" in done.stderr

"""``yoloserve detect`` against a small real HTTP server on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from fake_detect_service import serve
from PIL import Image

from clients.cli import detect_command
from harness.procs import free_port


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve() as base_url:
        yield base_url


def make_images(folder: Path, count: int, *, suffix: str = ".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}{suffix}"
        Image.new("RGB", (32 + i, 40), (i * 20, 0, 0)).save(path)
        paths.append(path)
    return paths


def run(*args: str) -> Result:
    return CliRunner().invoke(detect_command, list(args), catch_exceptions=False)


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_folder_writes_one_line_per_image_and_a_summary(url: str, tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", 3)
    make_images(tmp_path / "imgs" / "nested", 2, suffix=".JPG")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image, not picked")
    (tmp_path / "imgs" / ".hidden.png").write_bytes(b"skipped")
    result = run(str(tmp_path / "imgs"), "--url", url, "--conf", "0.4", "--ordered")
    assert result.exit_code == 0, result.stderr
    records = lines(result.stdout)
    assert [Path(r["path"]).name for r in records] == [
        "img00.png",
        "img01.png",
        "img02.png",
        "img00.JPG",
        "img01.JPG",
    ]
    assert all(r["detection_count"] == 1 for r in records)
    assert records[1]["image_dimensions"] == {"width": 33, "height": 40}
    assert records[0]["processing_metadata"]["confidence_threshold"] == 0.4
    assert "images: 5" in result.stderr and "detections: 5" in result.stderr
    assert "failures: 0" in result.stderr and "p95" in result.stderr
    assert "images/s" in result.stderr


def test_a_corrupt_file_writes_an_error_line_and_exits_1(url: str, tmp_path: Path) -> None:
    make_images(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    result = run(str(tmp_path), "--url", url, "--concurrency", "2")
    assert result.exit_code == 1
    records = lines(result.stdout)
    assert len(records) == 4
    errors = [r for r in records if "error" in r]
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.jpg")
    assert errors[0]["error"]["code"] == "invalid_image"
    assert errors[0]["error"]["status"] == 400 and errors[0]["error"]["request_id"]
    assert "failures: 1" in result.stderr


def test_out_file_globs_and_explicit_files(url: str, tmp_path: Path) -> None:
    images = make_images(tmp_path / "a", 3)
    odd = tmp_path / "picture.data"
    Image.new("L", (8, 8)).save(odd, format="PNG")
    out = tmp_path / "out.jsonl"
    result = run(
        str(tmp_path / "a" / "img0[01].png"),
        str(odd),
        "--url",
        url,
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    names = sorted(Path(r["path"]).name for r in lines(out.read_text()))
    assert names == sorted([images[0].name, images[1].name, odd.name])


def test_recursive_glob_of_folders(url: str, tmp_path: Path) -> None:
    make_images(tmp_path / "x" / "one", 1)
    make_images(tmp_path / "x" / "two", 2)
    result = run(str(tmp_path / "x" / "**" / "t*"), "--url", url)
    assert result.exit_code == 0, result.stderr
    assert len(lines(result.stdout)) == 2


def test_progress_bar_can_be_forced(url: str, tmp_path: Path) -> None:
    make_images(tmp_path, 4)
    result = run(str(tmp_path), "--url", url, "--progress", "--classes", "0, square")
    assert result.exit_code == 0, result.stderr
    assert "4/4" in result.stderr and "images: 4" in result.stderr


def test_an_unreachable_service_fails_every_image(tmp_path: Path) -> None:
    make_images(tmp_path, 2)
    port = free_port()  # nothing listens there
    result = run(
        str(tmp_path), "--url", f"http://127.0.0.1:{port}", "--retries", "0", "--timeout", "5"
    )
    assert result.exit_code == 1
    assert [r["error"]["code"] for r in lines(result.stdout)] == ["connect_failed"] * 2


def test_usage_errors(tmp_path: Path) -> None:
    missing = run(str(tmp_path / "nope.jpg"), "--url", "http://127.0.0.1:1")
    assert missing.exit_code == 2 and "no such file or folder" in missing.stderr
    empty = run(str(tmp_path), "--url", "http://127.0.0.1:1")
    assert empty.exit_code == 2 and "no images found" in empty.stderr
    assert run(str(tmp_path / "*.png")).exit_code == 2


def test_ctrl_c_prints_the_partial_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_images(tmp_path, 1)

    def interrupted(coro: Any) -> None:
        coro.close()
        raise KeyboardInterrupt

    monkeypatch.setattr("clients.cli.asyncio.run", interrupted)
    result = run(str(tmp_path), "--url", "http://127.0.0.1:1")
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "images: 0" in result.stderr

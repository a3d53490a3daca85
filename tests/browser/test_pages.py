"""The pages as a person uses them, in Debian's Chromium (headless, driven by Playwright): the demo
page on a real service process, the balancer's status page on a real ``yoloserve lb``, and the
API documentation. Every test fails on a console error, an uncaught exception or a failed request,
and on any request that leaves the host.

Screenshots go to a temporary folder; with ``YOLOSERVE_UPDATE_SCREENSHOTS=1`` they replace the
ones under ``docs/`` that the README shows.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest

from harness.procs import Balancer, FakeBackend, Fleet, wait_until
from service.demo.synthetic import make_sample
from tests.support.procs import ROOT, ServiceProcess

CHROMIUM = Path("/usr/bin/chromium")
STREAM_ROUTE = "/v1/streams/{stream_id}/frames"
TOKEN = "page-test-token"
API_KEY = "page-test-key"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(),
                       reason="Debian's chromium is not installed (/usr/bin/chromium)"),
]

sync_api = pytest.importorskip("playwright.sync_api")


# -- watching the browser ---------------------------------------------------------------------------------


@dataclass
class Watched:
    """A page whose console errors, exceptions, failed requests and off-host requests are kept."""

    page: Any
    host: str
    problems: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    expected_errors: list[re.Pattern[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"uncaught: {exc}"))
        self.page.on("requestfailed", lambda r: self.problems.append(
            f"request failed: {r.method} {r.url}: {r.failure}"))
        self.page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        if any(p.search(message.text) for p in self.expected_errors):
            return
        self.problems.append(f"console error: {message.text} at {message.location}")

    def _request(self, request: Any) -> None:
        self.urls.append(request.url)
        parts = urlsplit(request.url)
        if parts.scheme not in ("data", "blob") and parts.netloc != self.host:
            self.problems.append(f"a request left the host: {request.url}")

    def check(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    camera = tmp_path_factory.mktemp("camera") / "camera.y4m"
    _write_y4m(camera, _clip_frames(16, (320, 240)))
    args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium's sandbox does not run as root
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def watched(browser: Any) -> Iterator[list[Watched]]:
    """Pages opened by a test (``open_page``), checked when it ends."""
    opened: list[Watched] = []
    yield opened
    for w in opened:
        w.page.context.close()


def open_page(browser: Any, opened: list[Watched], url: str, width: int = 1280) -> Watched:
    context = browser.new_context(viewport={"width": width, "height": 900})
    w = Watched(context.new_page(), urlsplit(url).netloc)
    opened.append(w)
    return w


SHOTS = ROOT / "docs" if os.environ.get("YOLOSERVE_UPDATE_SCREENSHOTS") == "1" else None


def screenshot(w: Watched, name: str, tmp_path: Path) -> Path:
    out = (SHOTS or tmp_path) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    jpeg = {"type": "jpeg", "quality": 80} if out.suffix == ".jpg" else {}
    w.page.screenshot(path=str(out), full_page=True, **jpeg)
    return out


# -- generated media --------------------------------------------------------------------------------------


def _jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def _clip_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """Shapes sliding to the right by a few pixels a frame."""
    base = cv2.resize(make_sample(3, 1).image, size)
    return [np.roll(base, 4 * i, axis=1) for i in range(count)]


def _write_webm(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), fps, (w, h))
    assert writer.isOpened(), "OpenCV cannot write VP8"
    for frame in frames:
        writer.write(frame)
    writer.release()


def _write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """The raw format Chromium's fake camera reads: a header, then one I420 picture a frame."""
    h, w = frames[0].shape[:2]
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            out.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())


# -- the processes -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceProcess]:
    env = {"YOLOSERVE_CACHE_ENABLED": "false", "YOLOSERVE_MONITOR_BASELINE_IMAGES": "20",
           "YOLOSERVE_MONITOR_WINDOW": "40", "YOLOSERVE_MONITOR_MIN_WINDOW": "10",
           "YOLOSERVE_LOG_LEVEL": "WARNING", "YOLOSERVE_API_KEYS": f'["{API_KEY}"]'}
    with ServiceProcess("--model", "models/demo.onnx", "--max-batch-size", "4", env=env) as svc:
        yield svc


def _detect(url: str, data: bytes, **params: object) -> list[tuple[str, float]]:
    response = httpx.post(url + "/v1/detect", files={"image": ("x.jpg", data, "image/jpeg")},
                          data={k: str(v) for k, v in params.items()}, timeout=30,
                          headers={"Authorization": f"Bearer {API_KEY}"})
    response.raise_for_status()
    return [(d["class_name"], d["confidence"]) for d in response.json()["detections"]]


def _pick_image(url: str) -> tuple[bytes, list[tuple[str, float]]]:
    """A generated image with objects of at least two classes, one clearly surer than another."""
    for index in range(40):
        data = _jpeg(make_sample(21, index).image)
        found = _detect(url, data)
        confs = [c for _, c in found]
        if len({n for n, _ in found}) >= 2 and confs and min(confs) < max(confs) - 0.1:
            return data, found
    raise AssertionError("no generated image with two classes found")


def _rows(w: Watched, article: str) -> list[tuple[str, str]]:
    cells = w.page.eval_on_selector_all(
        f'{article} tbody tr',
        "rows => rows.map(r => [r.querySelector('.class').textContent,"
        "                       r.querySelector('.confidence').textContent])")
    return [(c, v) for c, v in cells]


def _wait_rows(w: Watched, article: str, expected: list[tuple[str, float]], what: str) -> None:
    want = sorted((n, f"{c:.3f}") for n, c in expected)
    try:
        wait_until(lambda: sorted(_rows(w, article)) == want, 30, what, every=0.1)
    except AssertionError as exc:
        shown = sorted(_rows(w, article))
        raise AssertionError(f"{exc}: the page shows {shown}, /v1/detect {want}") from None


# -- the demo page ------------------------------------------------------------------------------------------


def test_demo_page_detects_filters_and_redraws(service: ServiceProcess, browser: Any,
                                               watched: list[Watched], tmp_path: Path) -> None:
    data, found = _pick_image(service.url)
    warm = [_jpeg(make_sample(22, i).image) for i in range(40)]  # a baseline and a window for the panel
    for image in warm:
        _detect(service.url, image)

    w = open_page(browser, watched, service.url + "/")
    page = w.page
    page.goto(service.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#class-filter input[type=checkbox]").count() == 5
    for control in page.locator("input, button").all():  # every control has a label
        labelled = control.evaluate("e => e.labels && e.labels.length > 0 || !!e.getAttribute('aria-label')"
                                    " || e.tagName === 'BUTTON' && !!e.textContent.trim()")
        assert labelled, control.evaluate("e => e.outerHTML")

    # several images at once; without the API key the service refuses them, which the page says
    w.expected_errors.append(re.compile(r"status of 401"))
    page.set_input_files("#image-input", files=[
        {"name": "shapes.jpg", "mimeType": "image/jpeg", "buffer": data},
        {"name": "more.jpg", "mimeType": "image/jpeg", "buffer": warm[0]},
    ])
    article = 'article[data-name="shapes.jpg"]'
    page.wait_for_selector(f'{article}[data-state="error"] p.status:has-text("API key")')
    # both refused before 401s count as problems again (the second one's can come later)
    page.wait_for_selector('article[data-name="more.jpg"][data-state="error"]')
    w.expected_errors.clear()
    # with the key, kept in the tab's session only, both are drawn and listed
    page.fill("#api-key", API_KEY)
    assert page.evaluate("[sessionStorage.getItem('yoloserve.apiKey'), localStorage.length]") == [API_KEY, 0]
    page.wait_for_selector(f'{article}[data-state="done"]')
    page.wait_for_selector('article[data-name="more.jpg"][data-state="done"]')
    _wait_rows(w, article, found, "the table to list what /v1/detect finds")
    drawn = page.eval_on_selector(f"{article} canvas", "c => [c.width, c.height]")
    assert drawn == list(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[1::-1])
    for part in ("queue", "preprocess", "inference", "postprocess"):
        assert re.fullmatch(rf"{part} \d+\.\d ms", page.inner_text(f"{article} .timing-{part}"))

    # the conf slider, moved up by keyboard, leaves fewer rows
    top = max(c for _, c in found)
    target = int(top * 100) / 100
    page.focus("#conf")
    for _ in range(round((target - 0.25) * 100)):
        page.keyboard.press("ArrowRight")
    assert page.input_value("#conf") == f"{target:g}"
    fewer = [(n, c) for n, c in found if c >= target]
    assert 0 < len(fewer) < len(found)
    _wait_rows(w, article, _detect(service.url, data, conf=target), "the table to shrink")
    assert len(_rows(w, article)) == len(fewer)

    # the class filter: only the class of the surest object, at the threshold of everything
    page.focus("#conf")
    page.keyboard.press("Home")
    keep = max(found, key=lambda f: f[1])[0]
    for box in page.locator("#class-filter input[type=checkbox]").all():
        if box.get_attribute("value") != keep:
            box.uncheck()
    expected = _detect(service.url, data, conf=0.01, classes=keep)
    _wait_rows(w, article, expected, f"only {keep} in the table")
    page.fill("#max-det", "1")
    _wait_rows(w, article, expected[:1], "one row at max_det 1")
    page.fill("#max-det", "300")

    # the live panel and the drift table fill in
    wait_until(lambda: page.inner_text("#stat-ips") not in ("–", "0.0"), 10, "images/s on the panel")
    wait_until(lambda: page.locator("#drift-table tbody tr").count() == 5, 10, "the drift table")
    wait_until(lambda: page.locator("#drift-table .drift-score").first.inner_text().strip() != "–",
               10, "a drift score")
    assert page.locator("#model-card dd").first.inner_text() == "demo"
    assert "mAP50-95" in page.inner_text("#model-card")  # the shipped evaluation at FP32

    # back to the defaults for the pictures
    for box in page.locator("#class-filter input[type=checkbox]").all():
        box.check()
    page.fill("#conf", "0.25")
    _wait_rows(w, article, found, "the table at the defaults again")
    screenshot(w, "demo-page-1280.jpg", tmp_path)
    page.set_viewport_size({"width": 400, "height": 900})
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 400, f"the page is {overflow} px wide at 400 px"
    screenshot(w, "demo-page-400.jpg", tmp_path)
    w.check()


def _has_streams(url: str) -> bool:
    return STREAM_ROUTE in httpx.get(url + "/openapi.json", timeout=10).json()["paths"]


@pytest.mark.parametrize("source", ["file", "webcam"])
def test_video_mode_draws_track_ids(service: ServiceProcess, browser: Any, watched: list[Watched],
                                    tmp_path: Path, source: str) -> None:
    if not _has_streams(service.url):
        pytest.skip(f"this service has no streams API ({STREAM_ROUTE} is not in /openapi.json)")
    w = open_page(browser, watched, service.url + "/")
    page = w.page
    page.goto(service.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.fill("#api-key", API_KEY)
    if source == "file":
        clip = tmp_path / "clip.webm"
        _write_webm(clip, _clip_frames(20, (320, 240)))
        page.set_input_files("#video-input", str(clip))
    else:
        page.click("#webcam-button")
    wait_until(lambda: page.locator("#video-table td.track", has_text=re.compile(r"#\d+")).count() > 0,
               60, "a track id in the video table", every=0.2)
    wait_until(lambda: page.inner_text("#video-fps") != "–", 20, "frames/s")
    assert float(page.inner_text("#video-fps")) > 0
    if source == "file":
        shot = (SHOTS or tmp_path) / "video-mode.jpg"
        page.locator("section[aria-labelledby=video-title]").screenshot(
            path=str(shot), type="jpeg", quality=85)
    page.click("#video-stop")
    wait_until(lambda: page.inner_text("#video-status") == "stopped", 10, "the stream to stop")
    w.check()


# -- the API documentation -----------------------------------------------------------------------------------


def test_docs_and_redoc_load_from_the_host_and_show_every_operation(
        service: ServiceProcess, browser: Any, watched: list[Watched]) -> None:
    schema = httpx.get(service.url + "/openapi.json", timeout=10).json()
    operations = {(method.upper(), path) for path, methods in schema["paths"].items()
                  for method in methods}
    w = open_page(browser, watched, service.url)
    w.page.goto(service.url + "/docs")
    w.page.wait_for_selector(".opblock")
    shown = {(op.locator(".opblock-summary-method").inner_text().strip(),
              op.locator(".opblock-summary-path").get_attribute("data-path"))
             for op in w.page.locator(".opblock").all()}
    assert shown == operations
    w.page.goto(service.url + "/redoc")
    w.page.wait_for_selector("[role=menuitem]", timeout=30_000)
    w.page.wait_for_load_state("networkidle")
    assert any(u.endswith("/openapi.json") for u in w.urls)
    w.check()


# -- the balancer's status page ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def balancer() -> Iterator[Balancer]:
    backends = [FakeBackend("page-a"), FakeBackend("page-b")]
    with Fleet(*backends):
        proxy = Balancer("page-lb", [b.url for b in backends], "--health-interval", "0.5",
                         "--healthy-threshold", "1", "--no-access-log", cli=("yoloserve", "lb"),
                         token=TOKEN, ready_timeout=60.0, poll_max=0.5)
        with Fleet(proxy):
            yield proxy


def _traffic(url: str, stop: threading.Event) -> None:
    """Requests through the balancer, about 20 a second, until ``stop``."""
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.wait(0.05):
            client.get("/health/live")


def test_balancer_status_page_lists_both_backends_behind_the_token(
        balancer: Balancer, browser: Any, watched: list[Watched], tmp_path: Path) -> None:
    url = balancer.admin_url + "/"
    w = open_page(browser, watched, url)
    # without the token the status is refused, which the browser reports once
    w.expected_errors.append(re.compile(r"status of 401"))
    page = w.page
    page.goto(url)
    page.wait_for_selector("#error:has-text('admin token')")
    assert page.locator("#backends tbody tr").count() == 0
    w.expected_errors.clear()
    page.fill("#admin-token", TOKEN)
    page.wait_for_selector("body[data-backends='2']")
    rows = page.locator("#backends tbody tr")
    assert rows.count() == 2
    stop = threading.Event()
    traffic = threading.Thread(target=_traffic, args=(balancer.url, stop), daemon=True)
    traffic.start()
    try:
        wait_until(lambda: page.locator("#backends td.rate", has_text=re.compile(r"^[1-9]\d*\.\d$"))
                   .count() == 2, 20, "requests/s above 0 for both backends", every=0.2)
    finally:
        stop.set()
        traffic.join(10)
    for i in range(2):
        assert rows.nth(i).locator(".health").inner_text() == "healthy"
        assert rows.nth(i).locator(".weight").inner_text() == "1"
    assert page.evaluate("sessionStorage.getItem('yoloserve.lbToken')") == TOKEN
    screenshot(w, "lb-status-1280.png", tmp_path)
    page.set_viewport_size({"width": 400, "height": 700})
    screenshot(w, "lb-status-400.png", tmp_path)
    w.check()


@pytest.fixture(scope="module")
def every_task() -> Iterator[ServiceProcess]:
    """A service with the demo model of every task."""
    files = {"det": "demo.onnx", "seg": "demo-seg.onnx", "pose": "demo-pose.onnx",
             "obb": "demo-obb.onnx", "cls": "demo-cls.onnx"}
    args = [flag for name, file in files.items() for flag in ("--model", f"{name}=models/{file}")]
    with ServiceProcess(*args, "--max-batch-size", "4", env={"YOLOSERVE_ACCESS_LOG": "false"}) as svc:
        yield svc


def test_demo_page_draws_masks_keypoints_and_rotated_boxes(
        every_task: ServiceProcess, browser: Any, watched: list[Watched], tmp_path: Path) -> None:
    w = open_page(browser, watched, every_task.url + "/")
    page = w.page
    page.goto(every_task.url + "/")
    page.wait_for_selector("body[data-ready=true]")
    assert page.locator("#model-select option").count() == 5
    assert page.is_visible("#model-select")
    page.eval_on_selector("#conf", "e => { e.value = '0.1'; e.dispatchEvent(new Event('input')); }")
    image = _jpeg(make_sample(31, 2).image)
    page.set_input_files("#image-input", files=[
        {"name": "shapes.jpg", "mimeType": "image/jpeg", "buffer": image}])
    article = 'article[data-name="shapes.jpg"]'
    page.wait_for_selector(f'{article}[data-state="done"]')
    plain = page.eval_on_selector(f"{article} canvas", "c => c.toDataURL()")
    for model, part in (("seg", "masks"), ("pose", "keypoints"), ("obb", "rotated")):
        page.select_option("#model-select", model)
        page.wait_for_function(
            f"() => Number(document.querySelector('{article}').dataset.{part} || 0) > 0",
            timeout=30_000)
        drawn = page.eval_on_selector(f"{article} canvas", "c => c.toDataURL()")
        assert drawn != plain, model
    page.select_option("#model-select", "cls")
    page.wait_for_function(f"() => !!document.querySelector('{article}').dataset.top",
                           timeout=30_000)
    assert page.locator(f"{article} tbody tr").count() == 5
    w.check()


def test_screenshots_are_committed() -> None:
    for name in ("demo-page-1280.jpg", "demo-page-400.jpg", "video-mode.jpg", "lb-status-1280.png",
                 "lb-status-400.png"):
        assert (ROOT / "docs" / name).is_file(), f"docs/{name}: run with YOLOSERVE_UPDATE_SCREENSHOTS=1"


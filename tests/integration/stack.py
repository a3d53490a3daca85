"""The parts the acceptance tests put together: small distinct test images, real ``yoloserve serve``
processes that can be SIGKILLed and started again on their port, the real balancer in front of them,
a transport that counts the client's tries, and the comparison of a result with its reference.

Everything waits by polling with a deadline; nothing sleeps as synchronisation.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import httpx
from prometheus_client.parser import text_string_to_metric_families

from harness.procs import Service, await_until, start_all, stop_all
from tests.engine.images import shapes_image
from tests.loadbalancer.harness import LBProc
from wire.schemas import Detection, DetectionResult

__all__ = [
    "START_TIMEOUT",
    "CountingTransport",
    "Fleet",
    "LBProc",
    "differences",
    "lb_backend",
    "lb_counters",
    "small_jpeg",
    "snapshot_models",
    "start_lb",
    "wait_routed",
    "write_images",
]

SERVE_ARGS = ("--max-batch-size", "8", "--max-wait-ms", "5", "--log-format", "text")
MODEL_FILES = ("demo.pt", "demo.onnx")
# cache off: every result is computed. One core each: two services share two cores.
SERVE_ENV = {
    "YOLOSERVE_CACHE_ENABLED": "false",
    "YOLOSERVE_ACCESS_LOG": "false",
    "YOLOSERVE_CORES": "1",
}
START_TIMEOUT = 300.0  # loading and warming the model up is slow on a busy 2-core machine
CONF_TOLERANCE = 1e-3  # batch composition changes the float sums slightly: as the parity tests
BOX_TOLERANCE_PX = 1.0
BORDERLINE = 0.01  # a detection this close to the threshold may appear in one batch and not another


# -- images ------------------------------------------------------------------------------------


def small_jpeg(index: int) -> bytes:
    """A distinct synthetic JPEG of 96-160 px a side (small: thousands of requests stay fast)."""
    size = (96 + (index * 13) % 65, 96 + (index * 29) % 65)
    ok, buf = cv2.imencode(".jpg", shapes_image(index, size), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return bytes(buf.tobytes())


def write_images(folder: Path, count: int, *, distinct: int | None = None) -> list[Path]:
    """``count`` files ``img_NNNN.jpg`` in ``folder``; file ``i`` holds image ``i % distinct``."""
    folder.mkdir(parents=True, exist_ok=True)
    distinct = distinct or count
    cache = [small_jpeg(i) for i in range(min(distinct, count))]
    paths = []
    for i in range(count):
        path = folder / f"img_{i:04d}.jpg"
        path.write_bytes(cache[i % distinct])
        paths.append(path)
    return paths


# -- services ----------------------------------------------------------------------------------


def snapshot_models(source: Path, into: Path) -> Path:
    """A copy of the demo model (``.pt`` and its exported ``.onnx``) in ``into``; returns the
    ``.pt`` path, which ``serve`` resolves as it does the default (ONNX Runtime on a CPU).

    A service started again mid-test must load the same weights as the others, even when
    ``models/`` is replaced by a retrained model meanwhile.
    """
    into.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy2(source / name, into / name)
    return into / MODEL_FILES[0]


class Fleet:
    """Named ``yoloserve serve`` processes (cache off, batches of up to 8) on loopback ports, all
    on the weights in ``model``.

    One can be SIGKILLed (``kill``) and started again on the same port (``restart``); each
    incarnation logs to its own file in ``logdir``, and waits up to ``START_TIMEOUT`` to be ready.
    """

    def __init__(self, model: Path, logdir: Path) -> None:
        self.model = model
        self.logdir = logdir
        self.procs: dict[str, Service] = {}
        self._incarnations: Counter[str] = Counter()

    def url(self, name: str) -> str:
        return self.procs[name].url

    def start(self, *names: str) -> None:
        """Start them all, then wait for each (they load their models in parallel)."""
        start_all(self._spawn(name, port=None) for name in names)

    def kill(self, name: str) -> None:
        self.procs[name].kill()

    def restart(self, name: str) -> Service:
        """Kill ``name`` if it runs and start a new process on its port; does not wait."""
        self.kill(name)
        return self._spawn(name, port=self.procs[name].port).start()

    def ensure_ready(self, name: str) -> None:
        """Leave ``name`` running and ready, whatever a test did to it."""
        if not self.procs[name].running():
            self.restart(name)
        self.procs[name].wait_ready()

    def stop_all(self) -> None:
        stop_all(self.procs.values())

    def _spawn(self, name: str, port: int | None) -> Service:
        self._incarnations[name] += 1
        log = self.logdir / f"{name}-{self._incarnations[name]}.log"
        args = (*SERVE_ARGS, "--model", str(self.model))
        self.procs[name] = Service(name, *args, port=port, env=SERVE_ENV, stdout=log,
                                   ready_timeout=START_TIMEOUT)
        return self.procs[name]


def start_lb(*backends: str, timeout: float = 30.0) -> LBProc:
    """The real balancer (``python -m loadbalancer``, i.e. ``yoloserve lb``) in front of
    ``backends``, once every backend is healthy.

    Its settings are the defaults but one: a try may take 30 s, not 10. On a busy 2-core CPU a
    backend left alone with 64 requests in flight answers each after 10 s or more of queueing;
    the balancer would give up on those tries and, the other backend being down, answer 502.
    """
    return start_all([LBProc(backends, "--log-level", "warning", "--per-try-timeout", "30")], timeout)[0]


async def lb_backend(lb: LBProc, backend_url: str) -> dict[str, Any]:
    """One backend's entry in the balancer's ``GET /lb/status`` (without blocking the loop)."""
    async with httpx.AsyncClient(timeout=2.0, headers=lb.headers) as http:
        response = await http.get(f"{lb.admin_url}/lb/status")
    response.raise_for_status()
    found = [b for b in response.json()["backends"] if b["url"] == backend_url]
    assert len(found) == 1, f"{backend_url} not in the balancer's status"
    backend: dict[str, Any] = found[0]
    return backend


async def wait_routed(lb: LBProc, backend_url: str, *, within: float) -> float:
    """Poll the balancer's status until it routes to ``backend_url`` again (its own health checks
    passed); returns the ``time.monotonic()`` it did."""

    async def routed() -> bool:
        return (await lb_backend(lb, backend_url))["state"] in ("active", "slow_start")

    return await await_until(routed, within, f"the balancer to take {backend_url} back")


async def lb_counters(lb: LBProc) -> dict[str, float]:
    """The balancer's counters from its Prometheus ``/metrics``: ``name{label="v"}`` -> value."""
    async with httpx.AsyncClient(timeout=2.0, headers=lb.headers) as http:
        response = await http.get(f"{lb.admin_url}/metrics")
    response.raise_for_status()
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


# -- measuring ---------------------------------------------------------------------------------


class CountingTransport(httpx.AsyncBaseTransport):
    """httpx's own transport, counting every request the client sends: one request is one try.

    ``tries`` counts by path; ``retries`` counts the tries whose ``X-Attempt`` is over 1.
    """

    def __init__(self, max_connections: int = 64) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._inner = httpx.AsyncHTTPTransport(limits=limits)
        self.tries: Counter[str] = Counter()
        self.retries = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tries[request.url.path] += 1
        if int(request.headers.get("x-attempt", "1")) > 1:
            self.retries += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _close(a: Detection, b: Detection) -> bool:
    if a.class_id != b.class_id or abs(a.confidence - b.confidence) > CONF_TOLERANCE:
        return False
    pa, pb = a.box_2d, b.box_2d
    corners_a = (pa.x_min, pa.y_min, pa.x_max, pa.y_max)
    corners_b = (pb.x_min, pb.y_min, pb.x_max, pb.y_max)
    return all(abs(u - v) <= BOX_TOLERANCE_PX for u, v in zip(corners_a, corners_b, strict=True))


def differences(got: DetectionResult, want: DetectionResult) -> list[str]:
    """What differs between a result and the same image's reference, beyond float noise.

    Detections are matched one to one (same class, confidence within 1e-3, corners within 1 px);
    an unmatched one counts only if its confidence is clearly above the threshold.
    """
    problems = []
    got_model, want_model = got.processing_metadata.model_version, want.processing_metadata.model_version
    if got_model != want_model:
        problems.append(f"model {got_model} answered, the reference is from {want_model}")
    if got.image_dimensions != want.image_dimensions:
        problems.append(f"dimensions {got.image_dimensions} != {want.image_dimensions}")
    unmatched = list(want.detections)
    extra = []
    for det in got.detections:
        match = next((ref for ref in unmatched if _close(det, ref)), None)
        if match is None:
            extra.append(det)
        else:
            unmatched.remove(match)
    threshold = want.processing_metadata.confidence_threshold + BORDERLINE
    problems += [f"unexpected {d.class_name} {d.confidence:.3f} at {d.box_2d}" for d in extra
                 if d.confidence > threshold]
    problems += [f"missing {d.class_name} {d.confidence:.3f} at {d.box_2d}" for d in unmatched
                 if d.confidence > threshold]
    if got.detection_count != len(got.detections):
        problems.append(f"detection_count {got.detection_count} != {len(got.detections)}")
    return problems

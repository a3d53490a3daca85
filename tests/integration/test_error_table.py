"""One test per row of the error table, at both hops: the same request sent to the service
directly and through the balancer gets the same status and error code (`wire/errors.py`)."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image

from harness.procs import Balancer, Fleet, Service
from wire import errors as codes
from wire.errors import ERRORS

pytestmark = pytest.mark.slow

BURST = 3  # each test has a key of its own: the rate limit counts per key


OVERLOAD = [f"overload-{hop}-{i}" for hop in ("service", "balancer") for i in range(24)]


def _key(name: str) -> str:
    return f"key-{name}"


@dataclass(frozen=True)
class Hops:
    service: str
    balancer: str


@pytest.fixture(scope="module")
def hops() -> Iterator[Hops]:
    env = {
        "YOLOSERVE_API_KEYS": json.dumps([_key(name) for name in [*ROWS, "rate", *OVERLOAD]]),
        "YOLOSERVE_RATE_LIMIT_RPS": "0.001", "YOLOSERVE_RATE_LIMIT_BURST": str(BURST),
        # capacity 1: the overload row needs only a few concurrent requests
        "YOLOSERVE_MAX_QUEUE": "0", "YOLOSERVE_MAX_CONCURRENT_BATCHES": "1",
        "YOLOSERVE_CACHE_ENABLED": "false",
    }
    service = Service("svc", "--max-batch-size", "1", env=env)
    with Fleet(service):
        balancer = Balancer("lb", [service.url])
        with Fleet(balancer):
            yield Hops(service.url, balancer.url)


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    rng = np.random.default_rng(width * height)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(out, format="PNG")
    return out.getvalue()


def _post(url: str, key: str, **kwargs: object) -> httpx.Response:
    headers = {"X-API-Key": key, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    return httpx.post(url + "/v1/detect", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def _raw(url: str, data: bytes) -> tuple[int, str]:
    """Bytes that httpx would refuse to send; answers the status and the error code."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    response = httpx.Response(int(head.split()[1]), content=body)
    return response.status_code, response.json()["error"]["code"]


def _code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


ROWS: dict[str, Callable[[str, str], tuple[int, str]]] = {
    "invalid_image": lambda url, key: _code(_post(url, key, files={"image": ("x.jpg", b"not an image")})),
    "image_dimensions": lambda url, key: _code(_post(url, key, files={"image": ("x.png", _png(16, 16))})),
    "invalid_request": lambda url, key: _raw(url, b"NOT HTTP AT ALL\r\n\r\n"),
    "unauthorized": lambda url, key: _code(httpx.post(url + "/v1/detect", files={"image": b"x"}, timeout=30)),
    "not_found": lambda url, key: _code(httpx.get(url + "/v1/nothing-here", timeout=30)),
    "method_not_allowed": lambda url, key: _code(httpx.get(url + "/v1/detect", timeout=30)),
    "payload_too_large": lambda url, key: _code(_post(url, key,
                                                      files={"image": ("x.jpg", b"\0" * (11 << 20))})),
    "unsupported_media_type": lambda url, key: _code(_post(url, key, content=b"x",
                                                      headers={"Content-Type": "text/plain"})),
    "validation_error": lambda url, key: _code(_post(url, key, files={"image": ("x.png", _png(64, 64))},
                                                params={"conf": "2"})),
    "headers_too_large": lambda url, key: _code(_post(url, key, files={"image": ("x.png", _png(64, 64))},
                                                 headers={"X-Padding": "a" * 20_000})),
    "wrong_task": lambda url, key: _code(httpx.post(url + "/v1/classify", headers={"X-API-Key": key},
                                                    files={"image": ("x.png", _png(64, 64))},
                                                    timeout=30)),
    "deadline_exceeded": lambda url, key: _code(_post(url, key, files={"image": ("x.png", _png(64, 64))},
                                                 headers={"X-Request-Timeout-Ms": "0"})),
}


@pytest.mark.parametrize("hop", ["service", "balancer"])
@pytest.mark.parametrize("code", list(ROWS))
def test_row(hops: Hops, code: str, hop: str) -> None:
    url = getattr(hops, hop)
    assert ROWS[code](url, _key(code)) == (ERRORS[code].status, code)


@pytest.mark.parametrize("hop", ["service", "balancer"])
def test_rate_limited(hops: Hops, hop: str) -> None:
    """One client's bucket, whichever hop its requests come through."""
    url = getattr(hops, hop)
    image = {"image": ("x.png", _png(64, 64))}
    statuses = [_post(url, _key("rate"), files=image) for _ in range(BURST + 1)]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert _code(limited[0]) == (codes.RATE_LIMITED.status, "rate_limited")
    assert int(limited[0].headers["Retry-After"]) >= 1


@pytest.mark.parametrize("hop", ["service", "balancer"])
async def test_overloaded(hops: Hops, hop: str) -> None:
    """Past capacity (1 image here) the answer is 503 overloaded with Retry-After at either hop."""
    url = getattr(hops, hop)
    image = _png(1600, 1200)
    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(*(
            client.post(url + "/v1/detect", files={"image": ("x.png", image)},
                        headers={"X-API-Key": _key(f"overload-{hop}-{i}")}) for i in range(24)))
    refused = [r for r in answers if r.status_code == 503]
    assert refused, [r.status_code for r in answers]
    assert {_code(r) for r in refused} == {(codes.OVERLOADED.status, "overloaded")}
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert {r.status_code for r in answers} <= {200, 503}

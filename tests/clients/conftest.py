"""Shared helpers for the client's tests: a fake clock, canned answers, a scripted transport."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import httpx
import pytest

from clients import AsyncDetectionClient

BASE_URL = "http://yoloserve.test"


def result_payload(name: str = "image", count: int = 1) -> dict[str, Any]:
    """A valid DetectionResult body with ``count`` identical detections."""
    detection = {
        "class_name": "circle",
        "class_id": 0,
        "confidence": 0.9,
        "box_2d": {"x_min": 1.0, "y_min": 2.0, "x_max": 11.0, "y_max": 12.0},
        "normalized_box": {"x_center": 0.1, "y_center": 0.1, "width": 0.1, "height": 0.1},
        "box_area": 100.0,
    }
    return {
        "image_name": name,
        "image_dimensions": {"width": 100, "height": 100},
        "detections": [detection] * count,
        "detection_count": count,
        "processing_metadata": {
            "model_version": "3f2a9c0d1e4b",
            "confidence_threshold": 0.25,
            "iou_threshold": 0.7,
            "batch_size": 1,
            "timestamp": "2026-11-23T15:00:00Z",
        },
    }


def error_payload(code: str, message: str = "nope", request_id: str | None = "srv-1") -> bytes:
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return json.dumps(body).encode()


def ok(name: str = "image", count: int = 1) -> httpx.Response:
    return httpx.Response(200, json=result_payload(name, count))


def status(code: int, error: str = "boom", **headers: str) -> httpx.Response:
    return httpx.Response(code, content=error_payload(error), headers=headers)


async def until(predicate: Callable[[], bool], *, steps: int = 10_000) -> None:
    """Let other tasks run until ``predicate()`` holds (bounded: fails instead of hanging)."""
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


Answer = httpx.Response | BaseException
Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]


class Script:
    """A transport handler answering from a list (the last answer repeats), recording requests."""

    def __init__(self, answers: Sequence[Answer] | None = None) -> None:
        self.answers = list(answers or [ok()])
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def header(self, name: str) -> list[str]:
        return [request.headers.get(name, "") for request in self.requests]


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_client(fake_time: FakeTime) -> Callable[..., AsyncDetectionClient]:
    """Build clients on a mock transport and the fake clock; jitter 1.0 (the ceiling) by default."""

    def make(handler: Handler, **options: Any) -> AsyncDetectionClient:
        options.setdefault("sleep", fake_time.sleep)
        options.setdefault("clock", fake_time.clock)
        options.setdefault("jitter", lambda: 1.0)
        return AsyncDetectionClient(BASE_URL, transport=httpx.MockTransport(handler), **options)

    return make
